"""The Azure Functions app (Python v2 programming model): a thin composition root.

One Service Bus–triggered function per route in `shared/routes.py` (queue names from app settings
such as `%SLACK_EVENTS_QUEUE%`, connection `ServiceBusConnection`), each dispatching to the handlers
in `handlers/`; with a SignalR Service configured, the live page's functions too (negotiate, page,
assets: `functions.live`). Settings are validated here, at start: a wrong one stops the host with its name.
"""

import logging

import azure.functions as func

from functions import FunctionSettings, register_routes
from functions.live import register_live
from functions.logs import install_redaction
from handlers import bot

logging.getLogger("azure").setLevel(logging.WARNING)
install_redaction()

settings = FunctionSettings.from_env()
app = func.FunctionApp()
clients = register_routes(app, bot, settings)
live = register_live(app, bot, settings)
