"""Named fault points: where a test stops a worker (``[testing] fault``) to kill or stall it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

Fault = Callable[[str], None]


def fault_point(settings_fault: str | None, root: Path) -> Fault:
    """Pause at the named point a test asked for (``[testing] fault``), so it can kill us.

    The pause writes ``root/.fault-<point>`` (our pid) and lasts until the test removes that
    file (a stalled worker that goes on, e.g. after SIGSTOP and SIGCONT), once per process.
    """
    fired: set[str] = set()

    def fault(point: str) -> None:
        if settings_fault == point and point not in fired:
            fired.add(point)
            marker = root / f".fault-{point}"
            marker.write_text(str(os.getpid()))
            while marker.exists():
                time.sleep(0.05)

    return fault
