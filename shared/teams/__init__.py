"""Bot Connector reply client used by functions."""
