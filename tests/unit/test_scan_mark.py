"""The scan high-water mark of a capture task, stored as text on a SQLite ledger."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from sluicegate.ledger import Ledger


@pytest.mark.parametrize(
    "when",
    [
        dt.datetime(999, 6, 1, 12, 0, tzinfo=dt.UTC),  # strftime's %Y wrote "999-06-01", unreadable
        dt.datetime(2026, 3, 29, 1, 30, 0, 5, tzinfo=dt.UTC),
        dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC),
    ],
)
def test_a_scan_mark_reads_back_as_the_time_it_was(tmp_path: Path, when: dt.datetime) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        ledger.ensure_schema()
        ledger.capture.set_scan("t", when)
        text = ledger.capture.get_scan("t")
        assert text is not None and dt.datetime.fromisoformat(text) == when
    finally:
        ledger.close()
