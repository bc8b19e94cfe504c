"""Where the windows of an incremental run end: the export type's end, capped for late commits.

PostgreSQL and MariaDB: the end is capped at the start of the oldest transaction still open on
the source database (other than sluicegate's own), less ``safety_margin``, so rows such a
transaction writes with a cursor from its own clock (``DEFAULT now()``) fall into a later window;
an hourly or daily window so capped ends at a whole hour or day (or the run waits out a short
margin). SQLite: while a write transaction is open, every window is held back for this run.
(:mod:`sluicegate.watermarks` plans the windows.)
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from . import db
from .partitions import zone_of

if TYPE_CHECKING:
    from .drivers.incremental import Task as TaskSpec
    from .options import Budget

UTC = dt.UTC
MAX_MARGIN_WAIT = 120.0  # seconds an hourly or daily run waits for its margin, at most
STOPPED = "the run was told to stop (SIGINT or SIGTERM) while it waited out safety_margin; nothing exported"


def type_end(export_type: str, now: dt.datetime, spec: TaskSpec) -> dt.datetime:
    """The window end of an export type: start of today / this hour in the zone, or now minus margin."""
    if export_type == "instant":
        return now - dt.timedelta(seconds=spec.safety_margin)
    local = now.astimezone(zone_of(spec.zone))
    if export_type == "hourly":
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    midnight = dt.datetime.combine(local.date(), dt.time(), tzinfo=zone_of(spec.zone))
    return midnight.astimezone(UTC)


def commit_horizon(source: Any, margin: float) -> tuple[dt.datetime | None, str | None]:
    """Where a window must end for no later-committed row to land below it: ``(cap, None)``,
    ``(None, None)`` (no cap) or ``(None, reason)`` (hold every window back).

    The cap is the start of the oldest open transaction, or the server's clock now when earlier
    (a clock behind this host's stamps later rows below an end taken from this host's), less
    ``margin``: a row may be stamped up to that much before its transaction began, also in one
    that begins after this look (:func:`plan_windows` keeps hourly and daily windows whole).
    PostgreSQL: transactions on the source database, other than sluicegate's own readers and
    ledger; its writers (ingest, table sinks, blocks loads: ``db.WRITER_APPLICATION_NAME``)
    count like any other session.
    MariaDB/MySQL: InnoDB transactions of other sessions connected to the source's database
    (``information_schema.innodb_trx``, server-wide, joined to the process list for the
    database; needs the ``PROCESS`` privilege; shown in the session's UTC, in whole seconds,
    which only makes the cap earlier; a prepared XA transaction whose session ended counts too,
    whatever its database). SQLite: a reason when a write transaction is open right now;
    PostgreSQL: one when a prepared transaction is."""
    if source.dialect is db.MARIADB:
        # A prepared XA transaction whose session ended has thread id 0 and no database to
        # match: it counts whatever its database (an earlier cap, never a lost row).
        rows = source.execute(
            "SELECT min(t.trx_started), UTC_TIMESTAMP(6) FROM information_schema.innodb_trx AS t "
            "LEFT JOIN information_schema.processlist AS p ON p.id = t.trx_mysql_thread_id "
            "WHERE (p.db = DATABASE() AND t.trx_mysql_thread_id <> CONNECTION_ID())"
            " OR t.trx_mysql_thread_id = 0"
        )
        return _cap(rows[0][0], rows[0][1], margin), None
    if source.dialect is db.POSTGRESQL:
        # A prepared transaction (two-phase commit) has left pg_stat_activity, and its start is
        # nowhere: its rows may be stamped any time before it was prepared, so exports wait.
        prepared = source.execute(
            "SELECT gid, prepared FROM pg_prepared_xacts WHERE database = current_database()"
            " ORDER BY prepared LIMIT 1"
        )
        if prepared:
            gid, at = prepared[0]
            return None, (
                f"prepared transaction {gid!r} (prepared {at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}) is open on"
                f" the source; held back until COMMIT PREPARED or ROLLBACK PREPARED ends it"
            )
        rows = source.execute(
            "SELECT min(xact_start), clock_timestamp() FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
            " AND application_name <> %s AND backend_type = 'client backend'",
            (db.APPLICATION_NAME,),
        )
        return _cap(rows[0][0], rows[0][1], margin), None
    probe = sqlite3.connect(db.sqlite_path(source.url), timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.execute("ROLLBACK")
    except sqlite3.OperationalError:
        return None, "a write transaction is open on the SQLite source; held back until it ends"
    finally:
        probe.close()
    return None, None


def _margin_wait(task: TaskSpec, export_type: str, end: dt.datetime, horizon: dt.datetime | None) -> float:
    """Seconds to wait before an hourly or daily window can end at its period's end (at most the
    margin and MAX_MARGIN_WAIT; else 0, and the window ends a period earlier)."""
    if export_type == "instant" or horizon is None or horizon >= end:
        return 0.0
    wait = (end - horizon).total_seconds() + 0.05
    return wait if wait <= min(task.safety_margin, MAX_MARGIN_WAIT) else 0.0


def _wait_margin(
    task: TaskSpec, source: Any, window: tuple[str, dt.datetime], budget: Budget | None, *,
    values: Collection[str], claim: bool,
) -> tuple[dt.datetime | None, str | None, list[dict[str, Any]]]:  # fmt: skip
    """:func:`commit_horizon`, after waiting for the margin when the window (its type and end) would
    end a whole period earlier without (a run just after the hour or midnight), with notes for a
    dry run. The run's stop (SIGINT or SIGTERM) ends the wait, and then nothing is claimed. No
    wait longer than its time left (--max-runtime, a Lambda's) is made, none without a budget.
    A dry run (not ``claim``) plans the window the run exports after the wait, noting the wait."""
    horizon, held = commit_horizon(source, task.safety_margin)
    wait = _margin_wait(task, *window, horizon)
    if budget is None or horizon is None or not 0 < wait <= budget.left():
        return horizon, held, []
    if not claim:
        note = f"the run first waits {wait:.0f} s, until the source's clock is past the end + safety_margin"
        return (
            horizon + dt.timedelta(seconds=wait),
            None,
            [{"entity": e, "rows": 0, "note": note} for e in values],
        )
    if (budget.stop or threading.Event()).wait(wait):
        return None, STOPPED, []
    return *commit_horizon(source, task.safety_margin), []


def _cap(started: dt.datetime | None, clock: dt.datetime, margin: float) -> dt.datetime:
    """The earlier of ``started`` (the oldest open transaction's) and ``clock``, less ``margin``."""
    return (clock if started is None else min(started, clock)) - dt.timedelta(seconds=margin)


def capped_end(
    task: TaskSpec, source: Any, window: tuple[str, dt.datetime], budget: Budget | None, *,
    values: Collection[str], claim: bool, whole_days: bool,
) -> tuple[tuple[dt.datetime, str], str | None, list[dict[str, Any]]]:  # fmt: skip
    """Where the windows of a run of ``window`` (its type and end) end, and why when earlier; or
    why every window is held back; with the notes of a dry run's wait (see :func:`_wait_margin`).

    ``whole_days``: the cursor is a date, compared as its UTC midnight; a window that ended during
    a day took the rows dated that day so far, and its later ones were below the watermark."""
    export_type, end = window
    horizon, held, waits = _wait_margin(task, source, window, budget, values=values, claim=claim)
    capped = min(end, horizon) if horizon else end  # see commit_horizon
    if capped < end and export_type != "instant":  # whole hours or days: the last one waits
        capped = type_end(export_type, capped, task)  # (a window cut in a day stuck on its name)
    why = "a transaction that began then is still open, or the source's clock is within safety_margin"
    # The day of the end in zone, or in UTC when that is earlier (east of UTC, a writer's UTC
    # date, such as SQLite's date('now'), is a day behind): not over, its dates wait.
    days = (end.astimezone(zone_of(task.zone)).date(), end.astimezone(UTC).date())
    day = dt.datetime.combine(min(days), dt.time(), tzinfo=UTC)
    if whole_days and day < capped:
        zone = task.zone if day.date() == days[0] else "UTC"
        capped, why = day, f"rows dated {day.date()} wait until that day is over in {zone}"
    return (capped, why), held, waits
