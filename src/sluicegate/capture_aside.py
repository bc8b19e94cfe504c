"""Warnings of the capture fold: changes it sets aside (no partition can have them), each warned
of once a fold, and keys whose zone moved under days already cut.

A warning was logged per change: a location whose zone was misspelt logged one line for each of
its readings (on SQLite and MariaDB a change is one row), thousands a run for one location. Now
the changes of one key set aside for one reason are one warning, and a ``backfill`` hint spans
all their times.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .exceptions import BadPartitionValue, UsageError
from .partitions import Partition, render_path
from .sources.mariadb import from_wall_clock

if TYPE_CHECKING:
    from .drivers.partitioned import Task as TaskSpec
    from .ledger import Ledger

log = logging.getLogger("sluicegate.capture")
ONE_DAY = dt.timedelta(days=1)
_Times = tuple[dt.datetime, dt.datetime] | None


class SetAside:
    """Collects a fold's set-aside changes by (keys, why), then logs each once (:meth:`log`)."""

    def __init__(self, task: TaskSpec, wall: str | None) -> None:
        self.task, self.wall = task, wall
        self._seen: dict[tuple[str, str], tuple[str, str | None, _Times]] = {}

    def add(
        self,
        keys: Sequence[Any],
        why: str,
        *,
        remedy: str | None = "fix the rows in the source",
        times: _Times = None,
    ) -> None:
        """Set a change aside; ``remedy`` None: the backfill of its ``times``' days, once it has a zone."""
        pairs = ", ".join(
            f"{k}={'NULL' if v is None else v}" for k, v in zip(self.task.keys, keys, strict=True)
        )
        _, _, seen = self._seen.get((pairs, why), ("", None, None))
        if seen is not None and times is not None:
            times = (min(seen[0], times[0]), max(seen[1], times[1]))
        self._seen[(pairs, why)] = (pairs, remedy, times or seen)

    def log(self) -> None:
        """One warning per key and reason set aside."""
        for (_, why), (pairs, remedy, times) in self._seen.items():
            if remedy is None and times is not None:
                remedy = self._backfill_hint(*times)
            log.warning(
                "task %s: a change to %s %s has no partition and is not exported; %s",
                self.task.name, pairs or "its rows", why, remedy,
            )  # fmt: skip
        self._seen.clear()

    def _backfill_hint(self, first: dt.datetime, last: dt.datetime) -> str:
        """How to export a change once its key has a zone: the backfill of its days (a day either side)."""
        if self.wall is not None:
            first, last = (from_wall_clock(t.replace(tzinfo=None), self.wall) for t in (first, last))
        low, high = (first - ONE_DAY).date().isoformat(), (last + 2 * ONE_DAY).date().isoformat()
        return (
            f"once it has one, run 'sluicegate backfill {self.task.name} --time-min {low} --time-max {high}'"
        )


def warn_moved_zones(task: TaskSpec, ledger: Ledger, parts: Sequence[Partition], cur: Any = None) -> None:
    """Warn, once per key, when ``zone_sql`` gives a key another zone than its recorded days (the
    marked ones or their neighbours) were cut in, before the marks re-cut them.

    A re-cut day's new window leaves out the rows of its old one that its neighbours, still cut
    in the old zone, do not hold (Europe/Brussels to America/Santiago: six hours of the day before
    were in no file), or it holds rows a neighbour's file has too; nothing said so. Only
    ``reexport`` of the key re-cuts every day of it."""
    if task.time is None or not task.time.zone_sql or not parts:
        return
    wanted: dict[str, Partition] = {}  # each path to look up, and the partition of the key now
    looked: set[tuple[Any, ...]] = set()  # a run of days shares its neighbours: each rendered once
    for part in parts:
        for period in _around(part.values[-1], task.time.grain):
            if (values := (*part.values[:-1], period)) in looked:
                continue
            looked.add(values)
            try:
                wanted.setdefault(render_path(task, values), part)
            except (BadPartitionValue, OverflowError, UsageError):  # no path: nothing recorded there
                continue
    told: set[str] = set()
    for taken in ledger.partitions.paths_taken(task.name, list(wanted), cur):
        part = wanted[taken.path]
        pairs = " ".join(f"{k}={v}" for k, v in zip(task.keys, part.values, strict=False))
        if taken.zone is None or taken.zone == part.zone or pairs in told:
            continue
        told.add(pairs)
        log.warning(
            "task %s: %s now has the zone %s and its days were cut in %s: the files of its days cut in"
            " either zone overlap or miss rows until you run 'sluicegate reexport %s %s'",
            task.name, pairs, part.zone, taken.zone, task.name, pairs,
        )  # fmt: skip


def _around(period: Any, grain: str) -> list[Any]:
    """``period`` and the ones either side of it (an hour's neighbours: an hour off, stepped in
    UTC: aware times of one zone add by wall clock, which skips an hour the night it repeats)."""
    if grain == "day":
        return [period - ONE_DAY, period, period + ONE_DAY]
    at, hour = period.astimezone(dt.UTC), dt.timedelta(hours=1)
    return [(at - hour).astimezone(period.tzinfo), period, (at + hour).astimezone(period.tzinfo)]
