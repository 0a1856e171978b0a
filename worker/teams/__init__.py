"""Teams socket mode connector (Azure SignalR)."""
