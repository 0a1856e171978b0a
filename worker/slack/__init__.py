"""Slack Socket Mode connector."""
