"""Queue clients behind one small interface.

`QueueBackend.send()` makes one message durable; `EnvelopePublisher.publish()` routes an envelope and
returns only once it is durable. Backends: `local` (SQLite, the embedded default) and `servicebus`
(azure-servicebus .aio). Import a backend's module only where it is used: both pull in dependencies
the function app does not need.
"""

from shared.queueing.base import EnvelopePublisher, Publisher, QueueBackend, QueueMessage, build_message

__all__ = ["EnvelopePublisher", "Publisher", "QueueBackend", "QueueMessage", "build_message"]
