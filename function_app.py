"""The Azure Functions app (Python v2 programming model): a thin composition root.

One Service Bus–triggered function per route in `shared/routes.py` (queue names from app settings
such as `%SLACK_EVENTS_QUEUE%`, connection `ServiceBusConnection`), each dispatching to the handlers
in `handlers/`. Settings are validated here, at start: a wrong one stops the host with its name.
"""

import logging

import azure.functions as func

from handlers import bot
from shared.functions import register_routes
from shared.settings import FunctionSettings

logging.getLogger("azure").setLevel(logging.WARNING)

settings = FunctionSettings.from_env()
app = func.FunctionApp()
clients = register_routes(app, bot, settings)
