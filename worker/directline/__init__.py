"""The Direct Line connector: one socket per bot conversation, watermarks as the ack, leases across replicas.

- `protocol`: pure: stream frames, activity ids, watermark order, which activities to publish, envelopes;
- `api`: the Direct Line 3.0 REST calls (httpx), errors translated (`DirectLineApiError` tree);
- `connection`: one websocket (`streamUrl`), frames only, with a silence watchdog;
- `conversation`: one conversation's lifecycle (tokens, reconnects, polling fallback, parking);
- `watermarks`: the durable directory (watermark, lease) and the per-conversation ack tracker;
- `connector`: `DirectLineConnector(settings, handoff, metrics)`, a `worker.connector.Connector`;
- `settings`: `DirectLineSettings` (`DIRECTLINE_*`).
"""
