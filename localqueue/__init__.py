"""The embedded queue: Service Bus semantics on SQLite, for the worker's `local` backend and the dev stack.

- `localqueue.store`: `LocalQueueStore`, synchronous, one connection (the CLI, tests, the host's threads);
- `localqueue.backend`: `LocalQueueBackend`, the asyncio `QueueBackend` the worker publishes to, with the
  receiver API the local functions host uses;
- `localqueue.cli`: `python -m localqueue {stats,peek,dump,deadletter}` (also `python -m worker queue …`).

Nothing here imports the worker, the function side or the dev stack: only the contract (`shared`).
"""

from localqueue.backend import LocalQueueBackend
from localqueue.store import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_DELIVERY_COUNT_EXCEEDED,
    TTL_EXPIRED,
    Disposition,
    LocalQueueError,
    LocalQueueStore,
    LockLostError,
    MessageState,
    NotAQueueError,
    QueueConfig,
    QueueNotFoundError,
    QueueStats,
    SessionLease,
    StoredMessage,
    StoreMissingError,
    queue_configs,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_DELIVERY_COUNT_EXCEEDED",
    "TTL_EXPIRED",
    "Disposition",
    "LocalQueueBackend",
    "LocalQueueError",
    "LocalQueueStore",
    "LockLostError",
    "MessageState",
    "NotAQueueError",
    "QueueConfig",
    "QueueNotFoundError",
    "QueueStats",
    "SessionLease",
    "StoreMissingError",
    "StoredMessage",
    "queue_configs",
]
