"""Slack Socket Mode connector.

- `protocol`: frames in, typed results and ack frames out (pure, no I/O);
- `api`: `apps.connections.open` (httpx) and its error tree;
- `connection`: one websocket (reader, hand-off tasks, ack writer, keepalive and liveness watchdog);
- `pool`: N connections with make-before-break rotation, backoff and the final-error rules;
- `connector`: `SlackConnector`, the `worker.connector.Connector` the worker runs;
- `settings`: `SlackSettings` (environment variables, timing knobs).

This package's `__init__` stays import-light: `worker.settings` imports `worker.slack.settings`.
"""
