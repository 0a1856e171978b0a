"""One TLS client context for every connection of the worker process.

`ssl.create_default_context()` loads the system's CA store: about 50 ms of CPU and 0.9 MB of memory each time
(measured on the development VM). httpx builds one per client and asyncio one per `wss://` connection when given
`ssl=True`, and the transport keeps it for the connection's life: with several apps that is a context per app and
per socket, and 50 ms of CPU per reconnect or rotation. A context is safe to share between connections; this one
is built on first use and verifies certificates and host names as the default does.
"""

from __future__ import annotations

import functools
import ssl
from urllib.parse import urlsplit


@functools.cache
def client_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def for_url(url: str) -> ssl.SSLContext | None:
    """The shared context for a `wss://` (or `https://`) URL, None for any other (or unparseable) URL: the websocket
    library then refuses or connects it as it would without one."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return None
    return client_context() if scheme in ("wss", "https") else None
