"""The local queue's commit pacing is a worker setting (issue 14): it reaches the backend, and a wrong value is
`setting NAME: problem`."""

from __future__ import annotations

from pathlib import Path

import pytest

from localqueue import LocalQueueBackend
from shared.errors import ConfigurationError
from worker.runtime import build_backend
from worker.settings import load_settings


@pytest.mark.parametrize(("value", "seconds"), [(None, 0.005), ("0", 0.0), ("12.5", 0.0125)])
def test_the_commit_interval_reaches_the_local_queue(tmp_path: Path, value: str | None, seconds: float) -> None:
    env = {"RELAYBUS_LOCAL_QUEUE_PATH": str(tmp_path / "q.db")}
    if value is not None:
        env["RELAYBUS_LOCAL_QUEUE_COMMIT_INTERVAL_MS"] = value
    backend = build_backend(load_settings(env))
    assert isinstance(backend, LocalQueueBackend)
    assert backend.commit_interval == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["-1", "1001", "soon"])
def test_a_wrong_commit_interval_names_the_setting(tmp_path: Path, value: str) -> None:
    env = {"RELAYBUS_LOCAL_QUEUE_PATH": str(tmp_path / "q.db"), "RELAYBUS_LOCAL_QUEUE_COMMIT_INTERVAL_MS": value}
    with pytest.raises(ConfigurationError) as err:
        load_settings(env)
    assert err.value.setting == "RELAYBUS_LOCAL_QUEUE_COMMIT_INTERVAL_MS"


def test_every_tls_connection_shares_one_context() -> None:
    from worker import tls

    shared = tls.client_context()
    assert tls.for_url("wss://wss-primary.slack.com/link/?ticket=1") is shared
    assert tls.for_url("WSS://example.com/") is shared and tls.for_url("https://slack.com/api/") is shared
    assert tls.for_url("ws://127.0.0.1:1/") is None and tls.for_url("http://[::1") is None
    assert shared.verify_mode.name == "CERT_REQUIRED" and shared.check_hostname
