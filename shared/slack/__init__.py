"""Slack Web API reply client used by functions."""
