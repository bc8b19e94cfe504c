"""Test configuration: the server fixtures (plugins), environment hygiene, markers.

Server fixtures live in ``tests/plugins/`` (PostgreSQL, S3 endpoints, MariaDB). Each starts
one server per session, lazily (only when a test asks for it), and stops exactly the process
it started; a missing service skips loudly, or fails under ``CI=true``.

Layers: ``tests/unit`` needs no server and no network (SQLite and files only, ``make
test-fast``); ``tests/integration`` talks to real servers, processes and a browser. Tests are
marked ``pg``, ``s3`` or ``mariadb`` from the fixtures they use, and parametrised backends
carry the marker on their ``pytest.param``, so ``-m "not pg"`` never starts PostgreSQL.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from plugins.common import STARTUP_SECONDS
from sluicegate.config import OVERRIDE_ENV_NAMES, OVERRIDE_ENV_PREFIXES

pytest_plugins = [
    "plugins.postgres",
    "plugins.s3",
    "plugins.mariadb_server",
    "plugins.faultproxy",
    "plugins.tcpproxy",
]

SCRUBBED_ENV_NAMES = frozenset(OVERRIDE_ENV_NAMES)
SCRUBBED_ENV_PREFIXES = OVERRIDE_ENV_PREFIXES


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove configuration variables that would leak the developer's settings into tests."""
    for name in list(os.environ):
        if name in SCRUBBED_ENV_NAMES or name.startswith(SCRUBBED_ENV_PREFIXES):
            monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------- pytest hooks

_MARKER_FIXTURES = {
    "pg": {"pg_server", "pg_url"},
    "s3": {"moto_s3", "s3_bucket", "seaweed_s3", "seaweed_bucket"},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tag tests with the `pg` / `s3` markers from the fixtures they use (for `-m 'not s3'`)."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in _MARKER_FIXTURES.items():
            if used & fixtures:
                item.add_marker(marker)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if STARTUP_SECONDS:
        timings = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in STARTUP_SECONDS.items())
        terminalreporter.write_line(f"test service startup: {timings}")
