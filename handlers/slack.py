"""Example Slack handlers."""
