"""Code both sides import: the envelope contract, the route table, queue clients and reply clients.

Keep this package cheap to import: the function app's cold start imports it. Heavy clients
(azure-servicebus, httpx) live in submodules that are imported only where they are used.
"""

__version__ = "0.1.0"
