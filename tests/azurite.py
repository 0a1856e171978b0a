"""Real Azurite for tests: install (once, into .relaybus/node/azurite), start on a loopback port, stop.

A test module declares the session fixture itself (so pytest starts one Azurite per session):

    @pytest.fixture(scope="session")
    def azurite() -> Iterator[Azurite]:
        yield from running_azurite()

Only a missing node or npm skips (with the reason shown); an npm install or a start that fails is a
test failure, never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.azurite import Azurite, NodeMissing, node_tools


def running_azurite() -> Iterator[Azurite]:
    try:
        node_tools()
    except NodeMissing as exc:
        pytest.skip(f"Azurite cannot run here: {exc}")
    azurite = Azurite().start()  # AzuriteError (npm ci or start failed) fails the tests that need it
    try:
        yield azurite
    finally:
        azurite.stop()
