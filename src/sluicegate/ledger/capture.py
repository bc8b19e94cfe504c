"""Change capture's tables: the trigger inbox (in the source database) and scan high-water marks."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from .. import db
from ..partitions import json_number
from .core import Store

UTC = dt.UTC
# A captured change: the key values, and the first and last 15-minute bins of a run of the
# changed rows' bins (the same bin twice for one bin; None twice for a task without time).
Change = tuple[list[Any], Any, Any]
# A bin no datetime can hold (SQLite and MariaDB keep bins as Unix seconds): later than any
# time a partition can have, so the fold sets its change aside (capture.fold).
BEYOND = dt.datetime.max.replace(tzinfo=UTC)
# MariaDB's JSON_ARRAY writes a YEAR of 0 as the number 0000, which is no JSON.
_ZERO_YEAR = re.compile(r"(?<=[\[,\s])0000(?=\s*[,\]])")


class CaptureStore(Store):
    """The ``changes`` inbox that triggers append to, and the ``scans`` high-water marks."""

    SQL = "capture"

    def take_changes(self, task: str, *, limit: int, cur: Any) -> list[Change]:
        """Remove up to ``limit`` captured changes of ``task`` from the inbox, in the caller's transaction.

        Each is ``(keys, first bin, last bin)``. MariaDB/MySQL lock the rows (``SKIP LOCKED``:
        two workers fold different changes), then delete exactly those; elsewhere one ``DELETE
        ... RETURNING``. PostgreSQL takes up to ``limit`` from each of its two inbox tables.
        """
        self._run("take_changes", cur, task=task, limit=limit)
        rows = cur.fetchall()
        if self.core.dialect is db.MARIADB:
            if rows:
                self.delete_changes([int(row[0]) for row in rows], cur=cur)
            rows = [row[1:] for row in rows]
        return [self._change(row) for row in rows]

    def delete_changes(self, ids: list[int], *, cur: Any) -> None:
        """MariaDB/MySQL: remove the changes ``take_changes`` locked, in the caller's transaction."""
        cur.executemany(self.q["delete_changes"], [{"id": i} for i in ids])

    def peek_changes(self, task: str, *, limit: int) -> list[Change]:
        """Up to ``limit`` captured changes of ``task`` (from each inbox table), left in the inbox."""
        return [self._change(row) for row in self._run("peek_changes", task=task, limit=limit).fetchall()]

    def _change(self, row: Any) -> Change:
        keys, first, last = row
        values = keys if isinstance(keys, list) else _keys(keys)
        return values, self._bin(first), self._bin(last)

    def _bin(self, value: Any) -> dt.datetime | None:
        try:
            return self.core.from_ts(value)
        except (OverflowError, ValueError, OSError):  # out of datetime's years, or not a number
            return BEYOND

    def count_changes(self, task: str) -> tuple[int, dt.datetime | None]:
        """How many captured changes of ``task`` wait in the inbox, and when the oldest was made."""
        count, oldest = self._run("count_changes", task=task).fetchone()
        return int(count or 0), self.core.from_ts(oldest)

    def get_scan(self, task: str) -> str | None:
        """The scan high-water mark of ``task`` (ISO text), if any."""
        row = self._run("get_scan", task=task).fetchone()
        if not row or row[0] is None:
            return None
        value = row[0]
        if isinstance(value, dt.datetime):
            return value.isoformat()
        text = str(value)  # an older release wrote a year before 1000 unpadded ('999-06-01...')
        year, dash, rest = text.partition("-")
        return f"{int(year):04d}-{rest}" if dash and year.isdigit() and len(year) < 4 else text

    def set_scan(self, task: str, high_water: dt.datetime) -> None:
        """Move the scan high-water mark of ``task`` forward."""
        value: Any = high_water
        if self.core.dialect is db.SQLITE:
            # isoformat, not strftime: glibc's %Y writes year 999 as "999", which no reader parses
            value = high_water.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
        self._run("set_scan", task=task, high_water=value)


def _keys(text: str) -> list[Any]:
    """The key values of a change's JSON array (a YEAR 0 from a MariaDB trigger as 0: the fold of
    its ``0000`` failed every run with a JSONDecodeError traceback, and no change was folded)."""
    try:
        return list(json.loads(text, parse_float=json_number))
    except json.JSONDecodeError:
        return list(json.loads(_ZERO_YEAR.sub("0", text), parse_float=json_number))
