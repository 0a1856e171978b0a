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


def test_close_codes_and_plain_words_are_not_redacted() -> None:
    # a close code in a log line is not an OAuth code; only query parameters are secrets
    assert logs.redact("slack connection 0.1 ended: closed code=1000") == "slack connection 0.1 ended: closed code=1000"
    assert logs.redact("https://x/cb?state=1&code=abc123") == "https://x/cb?state=1&code=***"


def test_sandbox_style_tokens_with_underscores_are_fully_redacted() -> None:
    assert logs.redact("token xapp-1-sandbox_A0SANDBOX_public used") == "token *** used"
