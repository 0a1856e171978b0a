"""Compact JSON for frames and stored properties.

`json.dumps(obj, separators=(",", ":"))` builds a new `JSONEncoder` on every call; the hot paths
(Slack acks, SignalR frames, local queue properties) share this one instead.
"""

from __future__ import annotations

import json

compact = json.JSONEncoder(separators=(",", ":")).encode
"""`compact(obj) -> str`: JSON without spaces."""
