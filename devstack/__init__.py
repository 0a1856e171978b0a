"""The dev stack: what runs only on a developer's machine and in tests, never in Azure.

- `dev`: `python -m devstack dev` (`make dev`), the whole loop on one machine;
- `platforms`: the sandbox-backed demo platforms `dev` drives;
- `funchost`: a local Azure Functions host for the Service Bus–triggered functions of `function_app.py`;
- `sandbox/`: faithful local Slack and Teams servers (tests, benchmarks, `dev`);
- `infra`: `python -m devstack infra generate|check` (files rendered from the route table).

The dev stack may import everything; nothing outside it (but tests and benchmarks) imports it.
"""
