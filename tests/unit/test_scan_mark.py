"""The scan high-water mark of a capture task, stored as text on a SQLite ledger."""

from __future__ import annotations

import datetime as dt
import sqlite3
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


def test_a_mark_an_older_release_wrote_unpadded_is_read_and_then_moved_on(tmp_path: Path) -> None:
    """Before c9089f8 a mark before year 1000 was written '999-06-01...': every scan failed to read
    it, and as text it sorted above every later mark, so it was never replaced."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        ledger.ensure_schema()
        ledger.capture.set_scan("t", dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        with sqlite3.connect(tmp_path / "ledger.db") as conn:
            conn.execute("UPDATE sluicegate_scans SET high_water = '999-06-01T12:00:00.000000Z' WHERE task = 't'")
        text = ledger.capture.get_scan("t")
        assert text is not None and dt.datetime.fromisoformat(text) == dt.datetime(
            999, 6, 1, 12, tzinfo=dt.UTC
        )
        later = dt.datetime(2026, 12, 7, 5, 0, tzinfo=dt.UTC)
        ledger.capture.set_scan("t", later)
        assert ledger.capture.get_scan("t") is not None
        assert dt.datetime.fromisoformat(ledger.capture.get_scan("t") or "") == later
        ledger.capture.set_scan("t", dt.datetime(2025, 1, 1, tzinfo=dt.UTC))  # never back
        assert dt.datetime.fromisoformat(ledger.capture.get_scan("t") or "") == later
    finally:
        ledger.close()
