"""No secrets in any output: the one redaction (`shared.redact`) and the log filters built on it."""

from __future__ import annotations

import io
import logging

from hypothesis import given
from hypothesis import strategies as st

from shared.redact import redact, redact_url
from worker import logs

SECRETS = ("abc123", "xapp-1-A1_123_abc", "xoxb-1234_5678_abcdef", "eyJhbGciOi.sig", "k3y=", "hunter2", "CONNTOKEN")


def test_redact_tokens_and_query_secrets() -> None:
    line = (
        "open wss://wss-primary.slack.com/link/?ticket=abc123&app_id=A1 with Bearer xapp-1-A1_123_abc "
        "reply xoxb-1234_5678_abcdef access_token=eyJhbGciOi.sig Endpoint=sb://x/;SharedAccessKey=k3y=; "
        "https://user:hunter2@example.com/ wss://h/client/?hub=bot&id=CONNTOKEN&x=1"
    )
    out = redact(line)
    for secret in SECRETS:
        assert secret not in out
    assert "app_id=A1" in out and "hub=bot" in out and "x=1" in out


def test_jwts_authorization_headers_and_json_tokens() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJib3QifQ.c2lnbmF0dXJl"
    assert jwt not in redact(f"token was {jwt} ok")
    assert "s3cr3t" not in redact("Authorization: Basic s3cr3t")
    assert "s3cr3t" not in redact('{"accessToken": "s3cr3t", "url": "wss://x"}')
    assert redact('{"accessToken": "s3cr3t", "url": "wss://x"}').endswith('"url": "wss://x"}')


def test_redact_url_keeps_scheme_host_port_and_path_only() -> None:
    assert redact_url("wss://u:p@h.example:8443/link/?ticket=t#frag") == "wss://h.example:8443/link/"
    assert redact_url("http://[::1]:80/a?x=1") == "http://[::1]:80/a"
    # a port out of range makes urlsplit(...).port raise: still no query in the result
    assert redact_url("wss://h:999999/x?ticket=t") == "wss://h:999999/x"


def test_configured_logging_scrubs_records_and_tracebacks_from_any_library() -> None:
    stream = io.StringIO()
    logs.configure("info", stream=stream)  # log levels are case-insensitive
    try:
        logging.getLogger("some.library").warning("connecting with token %s", "xapp-1-secret")
        try:
            raise RuntimeError("GET https://x/?access_token=leaky failed")
        except RuntimeError:
            logging.getLogger("other").exception("it broke")
    finally:
        logging.getLogger().handlers.clear()
    text = stream.getvalue()
    assert "xapp-1-secret" not in text and "leaky" not in text
    assert "***" in text and "RuntimeError" in text


def test_close_codes_and_plain_words_are_not_redacted() -> None:
    # a close code in a log line is not an OAuth code; only query parameters are secrets
    assert redact("slack connection 0.1 ended: closed code=1000") == "slack connection 0.1 ended: closed code=1000"
    assert redact("https://x/cb?state=1&code=abc123") == "https://x/cb?state=1&code=***"
    assert redact("connection 3f2a (geo amer) is Online") == "connection 3f2a (geo amer) is Online"


def test_sandbox_style_tokens_with_underscores_are_fully_redacted() -> None:
    assert redact("token xapp-1-sandbox_A0SANDBOX_public used") == "token *** used"


@given(st.text(max_size=300))
def test_redaction_never_raises_and_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once
    redact_url(text)


@given(st.from_regex(r"[A-Za-z0-9_]{8,40}", fullmatch=True))
def test_any_slack_token_or_query_secret_is_hidden(secret: str) -> None:
    for template in ("xoxb-{s}", "xapp-1-{s}", "https://h/?ticket={s}", "Bearer {s}", "?access_token={s}&a=1"):
        assert secret not in redact("before " + template.format(s=secret) + " after")


def test_an_empty_user_part_counts_as_credentials() -> None:
    from shared.urls import check_https_url, split

    parts = split("https://:@slack.com/api/")
    assert parts is not None and parts.has_credentials
    import pytest as _pytest

    with _pytest.raises(ValueError, match="user name or password"):
        check_https_url("https://:@slack.com/api/", "https://slack.com/api/")
