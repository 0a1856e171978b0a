"""The relaybus worker: holds the platform sockets, dedupes envelopes, publishes them, then acks."""
