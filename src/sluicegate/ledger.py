"""The ledger: one row per (task, partition) with version, claim, lease, attempts and result.

The rules it enforces, all in single SQL statements (see ``sql/ledger_*.sql``):

* a change bumps ``version``; a partition is pending while ``version > exported_version``;
* a claim takes pending, complete partitions oldest change first (then oldest window first),
  under a fresh token and a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite);
* a commit sets ``exported_version`` to the version read at claim, and only while the
  claim token still matches, so a change made during the export keeps the partition
  pending and a worker whose lease was taken over commits nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

from . import db
from .config import TaskSpec
from .exceptions import LedgerError, SluicegateError
from .masking import mask_url
from .partitions import Partition
from .sql import queries

log = logging.getLogger("sluicegate.ledger")
T = TypeVar("T")

UTC = dt.UTC
SCHEMA_VERSION = "6"
# Columns added since version 4: (table, column, the named query adding it on SQLite).
SQLITE_ADDED_COLUMNS = (
    ("watermarks", "failed_destination", "add_failed_destination"),
    ("runs", "heartbeat_at", "add_run_heartbeat"),
)
HEARTBEAT_SECONDS = 30.0  # a run in progress records that it is alive this often ...
ABANDONED_AFTER = 120.0  # ... and one silent for this long is shown as abandoned


@dataclass(frozen=True, kw_only=True)
class Claim:
    """A partition held by this worker until ``commit``, ``fail`` or ``release``."""

    id: int
    task: str
    pkey: str
    keys: dict[str, Any]
    zone: str | None
    version: int
    attempts: int
    forced: bool
    exported_version: int
    token: str
    prev_path: str | None
    prev_bytes: int | None
    prev_checksum: str | None

    @property
    def reason(self) -> str:
        """Why this partition is exported: new, changed, retry or forced."""
        if self.forced:
            return "forced"
        if self.attempts > 0:
            return "retry"
        return "new" if self.exported_version == 0 else "changed"


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """A durable export of one claim, ready to be committed."""

    claim: Claim
    path: str | None
    rows: int
    nbytes: int
    checksum: str | None
    published: bool


@dataclass(frozen=True, kw_only=True)
class TaskStatus:
    """Partition counts of one task by state."""

    task: str
    pending: int
    claimed: int
    exported: int
    failed: int
    waiting: int
    retrying: int
    oldest_pending_age: float | None


class Ledger:
    """Access to the ledger tables in one database (the ledger database)."""

    def __init__(self, url: str, *, schema: str = "sluicegate") -> None:
        self.url = url
        self.schema = schema
        self.dialect = db.dialect_of(url)
        self.conn = db.connect(url, ledger=True)
        if self.dialect is db.POSTGRESQL:
            quoted = pgsql.Identifier(schema).as_string()
            self.q = queries("postgresql", quoted + ".", quoted)
        else:
            self.q = queries("sqlite", "sluicegate_")
        self._prefix = "sluicegate_" if self.dialect is db.SQLITE else f"{schema}."

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    @property
    def table_prefix(self) -> str:
        """How ledger tables are named in this database (for trigger DDL)."""
        return self._prefix

    def _ts(self, value: dt.datetime | None) -> Any:
        if value is None or self.dialect is db.POSTGRESQL:
            return value
        return value.timestamp()

    def _params(self, **params: Any) -> dict[str, Any]:
        if self.dialect is db.SQLITE:
            params.setdefault("now", time.time())
            return {k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in params.items()}
        return params

    def _exec(self, name: str, cur: Any | None = None, **params: Any) -> Any:
        if cur is not None:  # inside the caller's transaction, which retries as a whole
            with db.wrap_errors(self.url, ledger=True):
                cur.execute(self.q[name], self._params(**params))
                return cur
        return self._retrying(lambda: self.conn.execute(self.q[name], self._params(**params)))

    def _retrying(self, step: Callable[[], Any]) -> Any:
        """Run ``step``; if the connection was lost, reconnect (with backoff) and run it once more.

        Every ledger statement may run twice: marks only bump a version, and claims of
        this run's token, commits, failures, renewals and releases are fenced by the token.
        """
        for attempt in (1, 2):
            self._reconnect_if_lost()
            try:
                with db.wrap_errors(self.url, ledger=True):
                    return step()
            except LedgerError:
                if attempt == 2 or not self._lost():
                    raise
                log.warning("ledger connection to %s lost; reconnecting", mask_url(self.url))
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """One ledger transaction (write-locked on SQLite), after a reconnect if the connection was lost."""
        self._reconnect_if_lost()
        guard = db.wrap_errors(self.url, ledger=True)
        with guard, db.transaction(self.conn, self.dialect, immediate=True) as cur:
            yield cur

    def _in_transaction(self, body: Callable[[Any], T]) -> T:
        """Run ``body(cursor)`` in one transaction, once more on a new connection if the first was lost."""

        def step() -> T:
            with db.transaction(self.conn, self.dialect, immediate=True) as cur:
                return body(cur)

        result: T = self._retrying(step)
        return result

    def _lost(self) -> bool:
        return self.dialect is db.POSTGRESQL and bool(self.conn.closed or self.conn.broken)

    def _reconnect_if_lost(self) -> None:
        """Reconnect a lost PostgreSQL connection, with backoff (see :func:`db.reconnect`)."""
        if self._lost():
            try:
                self.conn = db.reconnect(self.url, ledger=True)
            except LedgerError as exc:
                raise LedgerError(
                    f"{exc}. Partitions this run had claimed stay claimed until their lease ends, "
                    "then any run takes them"
                ) from exc

    def ensure_schema(self) -> None:
        """Create the ledger tables if they do not exist (idempotent, safe to race)."""
        if self._schema_present():
            return
        with self._transaction() as cur:
            if self.dialect is db.POSTGRESQL:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext('sluicegate ledger schema'))")
            for statement in self.q["schema"].split(";\n"):
                if statement.strip():
                    cur.execute(statement)
            if self.dialect is db.SQLITE:  # migrations PostgreSQL does with ADD COLUMN IF NOT EXISTS
                for table, column, query in SQLITE_ADDED_COLUMNS:
                    columns = {row[1] for row in cur.execute(f"PRAGMA table_info({self._prefix}{table})")}
                    if column not in columns:
                        cur.execute(self.q[query])

    def _schema_present(self) -> bool:
        try:
            with db.wrap_errors(self.url, ledger=True):
                row = self.conn.execute(self.q["schema_version"], self._params()).fetchone()
        except SluicegateError:
            if self.dialect is db.POSTGRESQL:
                self.conn.rollback()
            return False
        return bool(row and row[0] == SCHEMA_VERSION)

    # ------------------------------------------------------------------ marks

    def mark(self, partitions: Iterable[Partition], task: TaskSpec, *, cur: Any | None = None) -> int:
        """Record a change to each partition (insert or bump version); return how many.

        With ``cur`` the marks join the caller's transaction on this database.
        """
        # Sorted, so concurrent workers lock ledger rows in one order and cannot deadlock.
        # One moment of change for the whole call, as now() is one moment per transaction on PostgreSQL.
        extra = {"now": time.time()} if self.dialect is db.SQLITE else {}
        rows = [{**self._mark_params(task, p), **extra} for p in sorted(partitions, key=lambda p: p.pkey)]
        if not rows:
            return 0
        if cur is not None:
            cur.executemany(self.q["mark"], rows)
            return len(rows)
        self._in_transaction(lambda tx: tx.executemany(self.q["mark"], rows))
        return len(rows)

    def _mark_params(self, task: TaskSpec, part: Partition) -> dict[str, Any]:
        keys = dict(zip(task.key_names, (_plain(v) for v in part.values), strict=True))
        return self._params(
            task=task.name,
            pkey=part.pkey,
            keys=Jsonb(keys) if self.dialect is db.POSTGRESQL else json.dumps(keys, sort_keys=True),
            zone=part.zone,
            win_start=self._ts(part.start),
            win_end=self._ts(part.end),
        )

    # ------------------------------------------------------------------ claims

    def claim(self, task: TaskSpec, *, limit: int, lease: float) -> list[Claim]:
        """Claim up to ``limit`` pending, complete partitions of ``task``."""
        token = uuid.uuid4()
        settle = task.time.settle if task.time else 0.0
        params = self._params(task=task.name, limit=limit, lease=lease, settle=settle, token=token)
        rows = self._in_transaction(lambda cur: cur.execute(self.q["claim"], params).fetchall())
        claims = [self._claim_from_row(task, row, str(token)) for row in rows]
        # RETURNING order is not guaranteed: export a batch in id order (the order of first marks).
        return sorted(claims, key=lambda c: c.id)

    def pending(self, task: TaskSpec, *, limit: int) -> list[Claim]:
        """Return what the next claim would take, without claiming (for ``--dry-run``)."""
        settle = task.time.settle if task.time else 0.0
        cur = self._exec("pending", task=task.name, limit=limit, settle=settle)
        return [self._claim_from_row(task, row, "") for row in cur.fetchall()]

    def _claim_from_row(self, task: TaskSpec, row: Sequence[Any], token: str) -> Claim:
        pid, pkey, keys, zone, version, attempts, forced, exported, path, nbytes, checksum = row
        return Claim(
            id=int(pid),
            task=task.name,
            pkey=pkey,
            keys=keys if isinstance(keys, dict) else json.loads(keys),
            zone=zone,
            version=int(version),
            attempts=int(attempts),
            forced=bool(forced),
            exported_version=int(exported),
            token=token,
            prev_path=path,
            prev_bytes=nbytes,
            prev_checksum=checksum,
        )

    def renew(self, token: str, *, lease: float) -> int:
        """Extend the lease of partitions still held under ``token``; return how many."""
        return int(self._exec("renew", token=uuid.UUID(token), lease=lease).rowcount)

    def commit(self, results: Sequence[ExportResult]) -> list[bool]:
        """Mark each claim exported at its claimed version, in one transaction.

        Returns, per result, False when that claim's lease was lost (nothing recorded).
        """
        done: dict[int, bool] = {}
        if self.dialect is db.POSTGRESQL and len(results) > 1:  # one round trip for the batch
            cur = self._exec(
                "commit_many",
                ids=[r.claim.id for r in results],
                tokens=[uuid.UUID(r.claim.token) for r in results],
                paths=[r.path for r in results],
                rows=[r.rows for r in results],
                bytes=[r.nbytes for r in results],
                checksums=[r.checksum for r in results],
            )
            recorded = {row[0] for row in cur.fetchall()}
            return [r.claim.id in recorded for r in results]

        def body(cur: Any) -> None:
            for r in sorted(results, key=lambda r: r.claim.pkey):  # the same lock order as mark()
                self._exec(
                    "commit",
                    cur,
                    id=r.claim.id,
                    token=uuid.UUID(r.claim.token),
                    path=r.path,
                    rows=r.rows,
                    bytes=r.nbytes,
                    checksum=r.checksum,
                )
                done[r.claim.id] = cur.rowcount == 1

        self._in_transaction(body)
        return [done[r.claim.id] for r in results]

    def fail(self, claim: Claim, *, error: str, terminal: bool, max_attempts: int, backoff: float) -> bool:
        """Give ``claim`` back after an error; park it when terminal or out of attempts."""
        cur = self._exec(
            "fail",
            id=claim.id,
            token=uuid.UUID(claim.token),
            error=error[:2000],
            terminal=terminal,
            max_attempts=max_attempts,
            backoff=backoff,
        )
        return bool(cur.rowcount == 1)

    def release(self, token: str) -> int:
        """Give back every partition still held under ``token``; return how many."""
        return int(self._exec("release", token=uuid.UUID(token)).rowcount)

    # ------------------------------------------------------------------ reporting and admin

    def status(self, task: TaskSpec) -> TaskStatus:
        """Count the task's partitions by state."""
        settle = task.time.settle if task.time else 0.0
        row = self._exec("status", task=task.name, settle=settle).fetchone()
        pending, claimed, exported, failed, waiting, retrying, age = row
        return TaskStatus(
            task=task.name,
            pending=int(pending or 0),
            claimed=int(claimed or 0),
            exported=int(exported or 0),
            failed=int(failed or 0),
            waiting=int(waiting or 0),
            retrying=int(retrying or 0),
            oldest_pending_age=None if age is None else float(age),
        )

    def failures(self, task: TaskSpec, *, limit: int = 20) -> list[tuple[str, int, str]]:
        """Return ``(partition, attempts, last error)`` of parked partitions."""
        return [tuple(r) for r in self._exec("failures", task=task.name, limit=limit).fetchall()]

    def reexport(self, task: TaskSpec, accept: Callable[[dict[str, Any], Any, Any], bool]) -> int:
        """Queue again every partition for which ``accept(keys, win_start, win_end)`` is true."""
        rows = self._exec("partition_keys", task=task.name).fetchall()
        chosen = []
        for pid, keys, start, end in rows:
            values = keys if isinstance(keys, dict) else json.loads(keys)
            if accept(values, self._from_ts(start), self._from_ts(end)):
                chosen.append(self._params(id=pid))
        if chosen:
            with self._transaction() as cur:
                cur.executemany(self.q["reexport"], chosen)
        return len(chosen)

    def _from_ts(self, value: Any) -> dt.datetime | None:
        if value is None or isinstance(value, dt.datetime):
            return value
        return dt.datetime.fromtimestamp(float(value), UTC)

    def reset_failed(self, task: TaskSpec) -> int:
        """Re-queue the task's parked partitions; return how many."""
        return int(self._exec("reset_failed", task=task.name).rowcount)

    # ------------------------------------------------------------------ runs, schedules, listings

    def start_run(
        self, task: str, *, tag: str | None, request: dict[str, Any], run_id: str | None = None
    ) -> str:
        """Record a run (``task`` may be ``*`` for all tasks) and return its id."""
        rid = uuid.UUID(run_id) if run_id else uuid.uuid4()
        self._exec("run_start", id=rid, task=task, tag=tag, request=json.dumps(request, default=str))
        return str(rid)

    def finish_run(self, run_id: str, summary: Any) -> None:
        """Record a run's summary (JSON-ready data)."""
        self._exec("run_finish", id=uuid.UUID(run_id), summary=json.dumps(summary, default=str))

    def heartbeat_run(self, run_id: str) -> None:
        """Record that an unfinished run is still alive."""
        self._exec("run_heartbeat", id=uuid.UUID(run_id))

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """One run, or None."""
        row = self._exec("run_get", id=uuid.UUID(run_id)).fetchone()
        return None if row is None else self._run_dict(row)

    def list_runs(self, *, limit: int = 50) -> list[dict[str, Any]]:
        """The most recent runs, newest first."""
        return [self._run_dict(r) for r in self._exec("run_list", limit=limit).fetchall()]

    def _run_dict(self, row: Sequence[Any]) -> dict[str, Any]:
        rid, task, tag, request, started, finished, summary, silent = row
        parsed = json.loads(summary) if summary else None
        if finished is None:
            # A run beats every HEARTBEAT_SECONDS; silence means its process died.
            state = "abandoned" if silent is not None and float(silent) > ABANDONED_AFTER else "running"
        else:
            tasks = parsed if isinstance(parsed, list) else []
            failed = any(t.get("failed") or t.get("task_errors") for t in tasks)
            state = "failed" if failed else "succeeded"
        return {
            "id": str(rid),
            "task": task,
            "tag": tag,
            "state": state,
            "request": json.loads(request) if request else None,
            "started_at": self._from_ts(started),
            "finished_at": self._from_ts(finished),
            "summary": parsed,
        }

    def claim_tick(self, task: TaskSpec, tick: dt.datetime) -> bool:
        """True for exactly one caller per (task, schedule tick), across every replica."""
        return bool(self._exec("tick_claim", task=task.name, tick=self._ts(tick)).rowcount == 1)

    def list_partitions(
        self, task: TaskSpec, *, state: str | None, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """A page of the task's partitions with their state."""
        settle = task.time.settle if task.time else 0.0
        names = (
            "partition",
            "keys",
            "version",
            "exported_version",
            "attempts",
            "last_error",
            "path",
            "rows",
            "bytes",
            "exported_at",
            "window_start",
            "window_end",
            "state",
        )
        out = []
        for row in self._exec(
            "list_partitions", task=task.name, state=state, limit=limit, offset=offset, settle=settle
        ).fetchall():
            item = dict(zip(names, row, strict=True))
            item["keys"] = item["keys"] if isinstance(item["keys"], dict) else json.loads(item["keys"])
            for key in ("exported_at", "window_start", "window_end"):
                item[key] = self._from_ts(item[key])
            out.append(item)
        return out

    # ------------------------------------------------------------------ change inbox and scans

    def take_changes(self, task: TaskSpec, *, limit: int, cur: Any) -> list[tuple[list[Any], Any]]:
        """Remove up to ``limit`` captured changes from the inbox within the caller's transaction."""
        self._exec("take_changes", cur, task=task.name, limit=limit)
        out = []
        for keys, bin_ in cur.fetchall():
            values = keys if isinstance(keys, list) else json.loads(keys)
            out.append((values, self._from_ts(bin_)))
        return out

    def get_scan(self, task: TaskSpec) -> str | None:
        """The scan high-water mark of ``task`` (ISO text), if any."""
        row = self._exec("get_scan", task=task.name).fetchone()
        if not row or row[0] is None:
            return None
        value = row[0]
        return value.isoformat() if isinstance(value, dt.datetime) else str(value)

    def set_scan(self, task: TaskSpec, high_water: dt.datetime) -> None:
        """Move the scan high-water mark of ``task`` forward."""
        value: Any = high_water
        if self.dialect is db.SQLITE:
            value = high_water.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self._exec("set_scan", task=task.name, high_water=value)


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


@dataclass(frozen=True, kw_only=True)
class WatermarkClaim:
    """A (task, entity) watermark row held by this worker."""

    id: int
    entity: str
    watermark: dt.datetime | None
    pending_start: dt.datetime | None
    pending_end: dt.datetime | None
    pending_type: str | None
    attempts: int
    token: str


class WatermarkLedger:
    """The per-(task, entity) watermarks, on the ledger database."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def _exec(self, name: str, cur: Any | None = None, **params: Any) -> Any:
        return self.ledger._exec(name, cur, **params)

    def _ts(self, value: dt.datetime | None) -> Any:
        return self.ledger._ts(value)

    def _tok(self, token: str | None) -> Any:
        return None if token is None else uuid.UUID(token)

    def ensure(self, task: TaskSpec, entities: Sequence[str]) -> None:
        """Create missing watermark rows (no watermark: the bootstrap applies)."""
        lg = self.ledger
        rows = [lg._params(task=task.name, entity=e) for e in sorted(entities)]
        if rows:
            with lg._transaction() as cur:
                cur.executemany(lg.q["wm_ensure"], rows)

    def claim(self, task: TaskSpec, entities: Sequence[str], *, lease: float) -> list[WatermarkClaim]:
        """Claim the free watermark rows of ``entities``; held rows are skipped."""
        lg = self.ledger
        token = uuid.uuid4()
        wanted: Any = list(entities) if lg.dialect is db.POSTGRESQL else json.dumps(list(entities))
        params = lg._params(task=task.name, entities=wanted, token=token, lease=lease)
        rows = lg._in_transaction(lambda cur: cur.execute(lg.q["wm_claim"], params).fetchall())
        out = [
            WatermarkClaim(
                id=int(r[0]),
                entity=str(r[1]),
                watermark=lg._from_ts(r[2]),
                pending_start=lg._from_ts(r[3]),
                pending_end=lg._from_ts(r[4]),
                pending_type=r[5],
                attempts=int(r[6]),
                token=str(token),
            )
            for r in rows
        ]
        return sorted(out, key=lambda c: c.entity)

    def set_pending(
        self, claim: WatermarkClaim, start: dt.datetime, end: dt.datetime, export_type: str
    ) -> None:
        """Remember the window being exported under ``claim``."""
        self._exec(
            "wm_set_pending",
            id=claim.id,
            token=self._tok(claim.token),
            start=self._ts(start),
            end=self._ts(end),
            type=export_type,
        )

    def commit(self, claim: WatermarkClaim, *, end: dt.datetime, rows: int, path: str | None) -> bool:
        """Advance the watermark to ``end`` (never backwards); False when the claim was lost."""
        cur = self._exec(
            "wm_commit", id=claim.id, token=self._tok(claim.token), end=self._ts(end), rows=rows, path=path
        )
        return bool(cur.rowcount == 1)

    def fail(
        self,
        task: TaskSpec,
        entity: str,
        *,
        token: str | None,
        error: str,
        start: dt.datetime,
        end: dt.datetime,
        export_type: str,
        mode: str,
        destination: str | None = None,
    ) -> None:
        """Record a failed window (with a re-export's override destination) for redrive."""
        if mode == "reexport":  # an entity never exported still gets a row, so redrive sees it
            self.ensure(task, [entity])
        self._exec(
            "wm_fail",
            task=task.name,
            entity=entity,
            token=self._tok(token),
            error=error[:2000],
            start=self._ts(start),
            end=self._ts(end),
            type=export_type,
            mode=mode,
            destination=destination,
        )

    def clear_failure(self, task: TaskSpec, entity: str) -> None:
        """Forget a recorded failure (its window was exported)."""
        self._exec("wm_clear_failure", task=task.name, entity=entity)

    def release_one(self, claim: WatermarkClaim) -> None:
        """Give back one watermark row without exporting (an empty window)."""
        self._exec("wm_release_one", id=claim.id, token=self._tok(claim.token))

    def renew(self, token: str, *, lease: float) -> int:
        """Extend the lease of the watermark rows held under ``token``; return how many."""
        return int(self._exec("wm_renew", token=self._tok(token), lease=lease).rowcount)

    def release(self, token: str) -> int:
        """Give back every watermark row held under ``token``."""
        return int(self._exec("wm_release", token=self._tok(token)).rowcount)

    def list(self, task: TaskSpec) -> list[dict[str, Any]]:
        """Every watermark row of ``task`` as a dict."""
        lg = self.ledger
        names = (
            "entity",
            "watermark",
            "attempts",
            "last_error",
            "failed_start",
            "failed_end",
            "failed_type",
            "failed_mode",
            "failed_destination",
            "exported_at",
            "rows",
            "path",
            "claimed",
        )
        out = []
        for row in self._exec("wm_list", task=task.name).fetchall():
            item = dict(zip(names, row, strict=True))
            for key in ("watermark", "failed_start", "failed_end", "exported_at"):
                item[key] = lg._from_ts(item[key])
            item["claimed"] = bool(item["claimed"])
            out.append(item)
        return out

    def delete(self, task: TaskSpec, entity: str) -> bool:
        """Delete an entity's watermark; True when there was one."""
        return bool(self._exec("wm_delete", task=task.name, entity=entity).rowcount)


@contextlib.contextmanager
def run_heartbeat(url: str, schema: str, run_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Beat for ``run_id`` every ``every`` seconds (own thread and connection) until the block ends."""
    stop = threading.Event()

    def beat() -> None:
        try:
            with Ledger(url, schema=schema) as ledger:
                while not stop.wait(every):
                    ledger.heartbeat_run(run_id)
        except SluicegateError as exc:  # the run goes on; it may show as abandoned
            log.warning("run %s: heartbeat stopped: %s", run_id, exc)

    thread = threading.Thread(target=beat, name="sluicegate-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
