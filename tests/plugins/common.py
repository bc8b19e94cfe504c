"""What the server fixtures share: ports, logs, and the skip-or-fail policy for missing services."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path
from typing import NoReturn

import pytest

STARTUP_TIMEOUT_S = 60.0
START_ATTEMPTS = 3  # retries with fresh ports if a port got taken between probing and binding

# Filled by the session fixtures, printed in the terminal summary.
STARTUP_SECONDS: dict[str, float] = {}


def service_unavailable(message: str) -> NoReturn:
    """Fail under CI=true, otherwise skip loudly."""
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{message} (CI=true, so this is an error rather than a skip)", pytrace=False)
    pytest.skip(
        f"!!! SERVICE UNAVAILABLE: {message}. Run `sudo scripts/install-system-deps.sh` and "
        "`make venv`; set CI=true to turn this skip into a failure."
    )


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free TCP ports on 127.0.0.1 (held open together while probing)."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def log_excerpt(path: Path, head: int = 10, tail: int = 40) -> str:
    """First and last lines of a log, for failure messages (the temp dir is deleted afterwards)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    if len(lines) > head + tail:
        lines = [*lines[:head], f"[... {len(lines) - head - tail} lines omitted ...]", *lines[-tail:]]
    return "\n".join(lines)


def read_from(path: Path, offset: int) -> str:
    """The text of ``path`` from byte ``offset`` on ('' if unreadable)."""
    try:
        with path.open("rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace")
    except OSError:
        return ""


_PORT_TAKEN = re.compile(r"address already in use|could not bind|port \d+ .* is not available", re.IGNORECASE)


def port_in_use(log_text: str) -> bool:
    """Did the server fail because a port was grabbed between our probe and its bind?"""
    return bool(_PORT_TAKEN.search(log_text))


def running_as_root() -> bool:
    return os.geteuid() == 0
