"""Evaluations of aggregate tasks: one row per (task, tick), claimed like a schedule tick.

A tick is claimed with one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` (the pattern of
:meth:`RunStore.claim_tick`, with a lease): a new tick, a failed tick whose retry time has
come, or a tick whose claim's lease ran out (its worker died) goes to exactly one caller. A
finished evaluation records its window, rows, duration and error, fenced by the claim token,
so a worker whose claim was taken over records nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from .. import db, mariadb_conn
from ..exceptions import LedgerError
from ..masking import mask_url
from ..tabledb import lock_timed_out
from .core import Store


class AggregateStore(Store):
    """The ``aggregate_evaluations`` of the ledger."""

    SQL = "aggregates"

    def claim(
        self,
        task: str,
        tick: dt.datetime,
        window: tuple[dt.datetime, dt.datetime],
        *,
        token: str,
        lease: float,
    ) -> int | None:
        """Claim ``tick`` of ``task`` under ``token``; return the attempt number, or None when it is
        done, being evaluated by a live claim, or failed and waiting for its retry time."""
        ts = self.core.ts
        params = self.core.params(
            task=task, tick=ts(tick), window_start=ts(window[0]), window_end=ts(window[1]),
            token=uuid.UUID(token), lease=lease,
        )  # fmt: skip

        def take(cur: Any) -> Any:
            cur.execute(self.q["claim"], params)  # MariaDB's execute returns None, not the cursor
            if self.core.dialect is not db.MARIADB:
                return cur.fetchone()  # RETURNING attempts, or no row
            return self.claim_attempts(cur, params)  # MariaDB/MySQL: no RETURNING

        row = self.core.in_transaction(take)
        return None if row is None else int(row[0])

    def claim_attempts(self, cur: Any, params: dict[str, Any]) -> Any:
        """MariaDB: the attempt number of the tick just claimed (a one-column row)."""
        return self._run("claim_attempts", cur, **params).fetchone()

    def renew(self, task: str, tick: dt.datetime, token: str, *, lease: float) -> bool:
        """Extend the claim; False when it was lost."""
        cur = self._run("renew", task=task, tick=self.core.ts(tick), token=uuid.UUID(token), lease=lease)
        return bool(cur.rowcount == 1)

    def finish(
        self,
        task: str,
        tick: dt.datetime,
        token: str,
        *,
        state: str = "done",
        rows: int,
        seconds: float,
        path: str | None = None,
        error: str | None = None,
        cur: Any | None = None,
    ) -> bool:
        """Record the evaluation ``done`` (or ``superseded``); False when the claim was lost.

        With ``cur`` the record is written in that transaction (the table sink's, when it
        writes to the ledger database), so the table and the record commit together.
        """
        with self._lock_wait(cur, task, tick):
            result = self._run(
                "finish", cur, task=task, tick=self.core.ts(tick), token=uuid.UUID(token), state=state,
                rows=rows, seconds=round(seconds, 6), path=path, error=error,
            )  # fmt: skip
        return bool(result.rowcount == 1)

    def newer(self, task: str, tick: dt.datetime, *, cur: Any | None = None) -> dt.datetime | None:
        """The newest tick after ``tick`` that is done or being evaluated under a live claim, if any
        (in ``cur``'s transaction when given: the table sink's, holding the table's write lock)."""
        with self._lock_wait(cur, task, tick):
            row = self._run("newer", cur, task=task, tick=self.core.ts(tick)).fetchone()
        return None if row is None else self.core.from_ts(row[0])

    @contextlib.contextmanager
    def _lock_wait(self, cur: Any | None, task: str, tick: dt.datetime) -> Iterator[None]:
        """A statement of ``task``'s ``tick`` in the table sink's transaction ``cur``: a lock wait
        that transaction ended (PostgreSQL's lock_timeout, MariaDB's innodb_lock_wait_timeout: half
        the lease) names the row waited for; it read as a bare "canceling statement due to lock
        timeout" (MariaDB: "Lock wait timeout exceeded") of the ledger."""
        try:
            yield
        except LedgerError as exc:
            if cur is None or self.core.dialect is db.SQLITE or not lock_timed_out(exc.__cause__):
                raise
            mariadb = self.core.dialect is db.MARIADB
            look = "information_schema.innodb_trx" if mariadb else "pg_stat_activity"
            table = f"{self.core.prefix if mariadb else self.core.schema + '.'}aggregate_evaluations"
            raise LedgerError(
                f"ledger database {mask_url(self.core.url)}: another session held the record of tick "
                f"{tick.isoformat()} of task {task} in {table} longer "
                f"than the table write waits for a lock (half the lease, at most {mariadb_conn.LOCK_WAIT} s),"
                " so the rows were not written; the tick is evaluated again once its lease ends (look for "
                f"a long transaction on the ledger in {look})"
            ) from exc.__cause__

    def fail(
        self, task: str, tick: dt.datetime, token: str, *, error: str, seconds: float, delay: float
    ) -> None:
        """Record a failed evaluation; the tick may be claimed again ``delay`` seconds from now."""
        self._run(
            "fail", task=task, tick=self.core.ts(tick), token=uuid.UUID(token), error=error,
            seconds=round(seconds, 6), delay=delay,
        )  # fmt: skip

    def release(self, task: str, tick: dt.datetime, token: str, *, error: str, seconds: float) -> None:
        """Give a claimed tick back without an attempt (its evaluation lost the source, no fault of
        its own), recording ``error``; it may be claimed again at once."""
        self._run(
            "release", task=task, tick=self.core.ts(tick), token=uuid.UUID(token), error=error,
            seconds=round(seconds, 6),
        )  # fmt: skip

    def prune(self, task: str, *, before: dt.datetime) -> int:
        """Forget the task's evaluations of ticks before ``before``; the number forgotten."""
        return int(self._run("prune", task=task, before=self.core.ts(before)).rowcount)

    def status(self, task: str) -> dict[str, Any]:
        """Counts of the task's evaluations by state, its latest done tick and its latest error. A
        tick given back (:meth:`release`) is no failure: when it is the newest, the task is waiting
        for the source (``source_error`` says why), and its next run evaluates it at once."""
        row = self._run("status", task=task).fetchone()
        done, failed, running, superseded, latest, last_error, source_error = row
        return {
            "evaluations": int(done or 0),
            "failed": int(failed or 0),
            "waiting_for_source": source_error is not None,
            "running": int(running or 0),
            "superseded": int(superseded or 0),
            "latest": self.core.from_ts(latest),
            "last_error": last_error,
            "source_error": source_error,
        }

    def recent(self, task: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """The task's latest evaluations, newest tick first; a tick given back (:meth:`release`,
        kept as a failed row without a retry time) as ``lost``, as its evaluation reported it."""
        return [self._row(r) for r in self._run("recent", task=task, limit=limit).fetchall()]

    def _row(self, row: Sequence[Any]) -> dict[str, Any]:
        tick, start, end, state, attempts, rows, seconds, path, error, started, finished, retry_at = row
        ts = self.core.from_ts
        return {
            "tick": ts(tick),
            "window_start": ts(start),
            "window_end": ts(end),
            "state": "lost" if state == "failed" and retry_at is None else state,
            "attempts": int(attempts),
            "rows": None if rows is None else int(rows),
            "seconds": None if seconds is None else float(seconds),
            "path": path,
            "error": error,
            "started_at": ts(started),
            "finished_at": ts(finished),
        }
