"""No secrets in logs: the redacting filter scrubs tokens from every record."""

from __future__ import annotations

import io
import logging

from worker import logs


def test_redact_tokens_and_query_secrets() -> None:
    line = (
        "open wss://wss-primary.slack.com/link/?ticket=abc123&app_id=A1 with Bearer xapp-1-A1_123_abc "
        "reply xoxb-1234_5678_abcdef access_token=eyJhbGciOi.sig Endpoint=sb://x/;SharedAccessKey=k3y=;"
    )
    out = logs.redact(line)
    for secret in ("abc123", "xapp-1-A1_123_abc", "xoxb-1234_5678_abcdef", "eyJhbGciOi.sig", "k3y="):
        assert secret not in out
    assert "app_id=A1" in out


def test_strip_query() -> None:
    assert logs.strip_query("wss://h/link/?ticket=t#x") == "wss://h/link/"


def test_configured_logging_scrubs_records_from_any_library() -> None:
    stream = io.StringIO()
    logs.configure("INFO", stream=stream)
    try:
        logging.getLogger("some.library").warning("connecting with token %s", "xapp-1-secret")
    finally:
        logging.getLogger().handlers.clear()
    assert "xapp-1-secret" not in stream.getvalue()
    assert "***" in stream.getvalue()
