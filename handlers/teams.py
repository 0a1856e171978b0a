"""Example Teams handlers."""
