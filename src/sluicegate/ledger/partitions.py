"""Partitions of partitioned tasks: one row per (task, partition) with version, claim and result.

The rules it enforces, all in single SQL statements (``sql/<dialect>/partitions.sql``):

* a change bumps ``version``; a partition is pending while ``version > exported_version``;
* a claim takes pending, complete partitions oldest change first (then oldest window first), under
  a fresh token and a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL and MariaDB, there in three
  statements in one transaction, ``BEGIN IMMEDIATE`` on SQLite);
* a commit sets ``exported_version`` to the version read at claim, and only while the claim token
  still matches: a change made during the export keeps the partition pending, and a worker whose
  lease was taken over commits nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import db, paths
from ..exceptions import LedgerError, UsageError
from ..partitions import Partition, PartitionKeys
from .claims import Claim, ExportResult, Place, Vet
from .core import Store, pg_array

log = logging.getLogger("sluicegate.capture")
# The longest partition key (canonical JSON text) a ledger's pkey column holds: VARCHAR(512) on
# MariaDB (sql/mariadb/schema.sql, within InnoDB's key length); text elsewhere.
PKEY_CHARS = {db.MARIADB: 512}


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
    other_zone: int = 0  # cut in another zone than the task's (None given: 0)


def _settle(task: PartitionKeys) -> float:
    return task.time.settle if task.time else 0.0


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


class PartitionStore(Store):
    """Marks, claims, commits and failures of partitions."""

    SQL = "partitions"

    def mark(
        self,
        partitions: Iterable[Partition],
        task: PartitionKeys,
        *,
        cur: Any | None = None,
        strict: bool = False,
    ) -> int:
        """Record a change to each partition (insert or bump version); return how many.

        With ``cur`` the marks join the caller's transaction on this database. A partition whose
        key the ledger cannot hold is left out with a warning, or with ``strict`` (``sluicegate
        mark``) refused with a UsageError.
        """
        partitions = [p for p in partitions if not self._too_long(task, p, strict=strict)]
        # Sorted, so concurrent workers lock ledger rows in one order and cannot deadlock.
        # One moment of change for the whole call, as now() is one moment per transaction on PostgreSQL.
        extra = {"now": time.time()} if self.core.dialect is db.SQLITE else {}
        rows = [{**self._mark_params(task, p), **extra} for p in sorted(partitions, key=lambda p: p.pkey)]
        if not rows:
            return 0
        if cur is not None:
            cur.executemany(self.q["mark"], rows)
            return len(rows)
        self.core.in_transaction(lambda tx: tx.executemany(self.q["mark"], rows))
        return len(rows)

    def _too_long(self, task: PartitionKeys, part: Partition, *, strict: bool) -> bool:
        """Whether ``part``'s key is longer than the ledger's pkey column holds: its insert failed
        the whole mark, and so every run of the task, with "Data too long for column 'pkey'"."""
        limit = PKEY_CHARS.get(self.core.dialect)
        if limit is None or len(part.pkey) <= limit:
            return False
        problem = f"the key of partition {paths.shown(part.pkey)} is longer than the ledger's {limit}"
        problem += " characters"
        if strict:
            raise UsageError(f"{problem}; no partition can have it")
        log.warning("task %s: %s; it is not marked or exported; use a shorter key column", task.name, problem)
        return True

    def _mark_params(self, task: PartitionKeys, part: Partition) -> dict[str, Any]:
        keys = dict(zip(task.key_names, (_plain(v) for v in part.values), strict=True))
        return self.core.params(
            task=task.name,
            pkey=part.pkey,
            keys=self._json(keys),
            zone=part.zone,
            win_start=self.core.ts(part.start),
            win_end=self.core.ts(part.end),
        )

    def _json(self, value: dict[str, Any]) -> Any:
        if self.core.dialect is db.POSTGRESQL:
            from psycopg.types.json import Jsonb

            return Jsonb(value)
        return json.dumps(value, sort_keys=True)

    def claim(self, task: PartitionKeys, *, limit: int, lease: float) -> list[Claim]:
        """Claim up to ``limit`` pending, complete partitions of ``task``."""
        token = uuid.uuid4()
        params = self.core.params(task=task.name, limit=limit, lease=lease, settle=_settle(task), token=token)

        def take(cur: Any) -> list[Any]:
            cur.execute(self.q["claim"], params)  # MariaDB's execute returns None, not the cursor
            rows = list(cur.fetchall())
            if self.core.dialect is not db.MARIADB:  # UPDATE ... RETURNING took them
                return rows
            # MariaDB/MySQL have no UPDATE ... RETURNING: lock (SKIP LOCKED), take, read back.
            if not rows:
                return []
            self.claim_take(cur, [int(row[0]) for row in rows], token=params["token"], lease=float(lease))
            return self.claimed(cur, params["token"])

        rows = self.core.in_transaction(take)
        claims = [self._claim_from_row(task, row, str(token)) for row in rows]
        # RETURNING order is not guaranteed: export a batch in id order (the order of first marks).
        return sorted(claims, key=lambda c: c.id)

    def claim_take(self, cur: Any, ids: list[int], *, token: str, lease: float) -> None:
        """MariaDB/MySQL: put the rows ``claim`` locked under ``token`` and a lease (one round trip)."""
        cur.executemany(self.q["claim_take"], [{"id": i, "token": token, "lease": lease} for i in ids])

    def claimed(self, cur: Any, token: str) -> list[Any]:
        """MariaDB/MySQL: the rows held under ``token``, as a claim returns them."""
        return list(self._run("claimed", cur, token=token).fetchall())

    def pending(self, task: PartitionKeys, *, limit: int) -> list[Claim]:
        """Return what the next claim would take, without claiming (for ``--dry-run``)."""
        cur = self._run("pending", task=task.name, limit=limit, settle=_settle(task))
        return [self._claim_from_row(task, row, "") for row in cur.fetchall()]

    def paths_taken(
        self, task: str, paths: Collection[str], cur: Any = None
    ) -> list[tuple[str, str, str | None]]:
        """``(path, pkey, zone)`` of the task's partitions that recorded one of ``paths``."""
        if not paths:
            return []
        chosen = pg_array(paths) if self.core.dialect is db.POSTGRESQL else json.dumps(list(paths))
        rows = self._run("paths_taken", cur, task=task, paths=chosen).fetchall()
        return [(path, pkey, zone) for path, pkey, zone in rows if path in paths]  # exact (MariaDB pads)

    def lock_paths(self, cur: Any, results: Sequence[ExportResult], names: list[str]) -> None:
        """In ``cur``'s transaction: lock the files of ``results`` until it ends, waiting for another
        worker's commit of one of them (SQLite: the transaction's write lock does). MariaDB's locks
        last until :meth:`unlock_paths` frees ``names``."""
        digests = sorted(
            {hashlib.sha256(f"{r.claim.task}/{r.path}".encode()).hexdigest() for r in results if r.path}
        )
        if self.core.dialect is db.POSTGRESQL and digests:
            self._run("lock_paths", cur, keys=pg_array(int(d[:16], 16) - (1 << 63) for d in digests))
        elif self.core.dialect is db.MARIADB and digests:
            names += [f"sluicegate file {d[:40]}" for d in digests]
            if any(got != 1 for (got,) in self._run("lock_paths", cur, names=json.dumps(names)).fetchall()):
                raise LedgerError("another worker held a file this run was to put in place for 10 s")

    def unlock_paths(self, names: list[str]) -> None:
        """MariaDB: free the locks of files :meth:`lock_paths` took on this connection."""
        self._run("unlock_paths", names=json.dumps(names)).fetchall()

    def _claim_from_row(self, task: PartitionKeys, row: Sequence[Any], token: str) -> Claim:
        pid, pkey, keys, zone, version, attempts, forced, exported, path, nbytes, checksum, etag = row
        return Claim(
            id=int(pid), task=task.name, pkey=pkey, keys=_named(keys, pkey, task.key_names), zone=zone,
            version=int(version), attempts=int(attempts), forced=bool(forced), exported_version=int(exported),
            token=token, prev_path=path, prev_bytes=nbytes, prev_checksum=checksum, prev_etag=etag,
        )  # fmt: skip

    def renew(self, token: str, *, lease: float) -> int:
        """Extend the lease of partitions still held under ``token``; return how many."""
        if self.core.dialect is not db.MARIADB:
            return int(self._run("renew", token=uuid.UUID(token), lease=lease).rowcount)

        def body(cur: Any) -> int:  # MariaDB: lock the rows no one else holds, then extend them
            ids = [int(row[0]) for row in self._run("renew", cur, token=uuid.UUID(token)).fetchall()]
            return self.renew_rows(cur, ids, token=token, lease=lease)

        return self.core.in_transaction(body)

    def renew_rows(self, cur: Any, ids: Sequence[int], *, token: str, lease: float) -> int:
        """MariaDB/MySQL: extend the leases of ``ids`` (locked by ``renew``) still held under ``token``."""
        return self._each(cur, self.q["renew_rows"], ids, token=uuid.UUID(token), lease=lease)

    def _each(self, cur: Any, statement: str, ids: Sequence[int], **params: Any) -> int:
        """Run ``statement`` for each of ``ids`` in that order (one round trip); return the rows changed."""
        if not ids:
            return 0
        cur.executemany(statement, [self.core.params(id=i, **params) for i in ids])
        return int(cur.rowcount)

    def commit(
        self, results: Sequence[ExportResult], place: Place | None = None, vet: Vet | None = None
    ) -> list[bool]:
        """Mark each claim exported at its claimed version, in one transaction.

        Fencing: the rows of the claims still held are locked first (``hold``), then
        ``place(held)`` puts their files in place (renames, deletions, uploads that must not
        race a newer worker), then they are committed, all in one transaction. A claim whose
        lease was taken over is neither placed nor recorded. If ``place`` raises, nothing is
        recorded and the error propagates. If the connection is lost after the files were
        placed, the commit is tried once more on a new connection without placing again: the
        claims still held are committed (their files are in place), the others are not.
        With ``vet``, the files of the held claims are locked first, and only those ``vet`` keeps
        of the ones another partition of the task recorded are placed and recorded.
        Returns, per result, whether it was recorded.
        """
        if not results:
            return []
        placed: Sequence[ExportResult] | None = None
        names: list[str] = []  # MariaDB's locks of the files

        def body(cur: Any) -> set[int]:
            nonlocal placed
            held_ids = self.hold(cur, results)
            if placed is None:
                held: Sequence[ExportResult] = [r for r in results if r.claim.id in held_ids]
                if vet is not None and held:
                    self.lock_paths(cur, held, names)
                    held = vet(
                        held, self.paths_taken(held[0].claim.task, {r.path for r in held if r.path}, cur)
                    )
                placed = place(held) if place is not None and held else held
                chosen = placed
            else:  # a retry on a new connection: the files are in place already
                chosen = [r for r in placed if r.claim.id in held_ids]
            return self.commit_held(cur, chosen) if chosen else set()

        try:
            recorded = self.core.in_transaction(body)
        finally:
            if names:
                self.unlock_paths(names)
        return [r.claim.id in recorded for r in results]

    def hold(self, cur: Any, results: Sequence[ExportResult]) -> set[int]:
        """In ``cur``'s transaction: lock and return the ids of the claims still held under their tokens."""
        if self.core.dialect is db.POSTGRESQL:
            cur.execute("SET LOCAL lock_timeout = '10s'")
            rows = self._run(
                "hold",
                cur,
                ids=pg_array(r.claim.id for r in results),
                tokens=pg_array(r.claim.token for r in results),
            ).fetchall()
            return {int(row[0]) for row in rows}
        held = set()
        if self.core.dialect is db.MARIADB:
            # One statement per task (not one per row: 0.1-0.2 ms a partition) locks the rows in
            # pkey order, as marks lock them, so the two cannot deadlock; keep those still ours.
            for task in sorted({r.claim.task for r in results}):
                mine = sorted((r for r in results if r.claim.task == task), key=lambda r: r.claim.pkey)
                pkeys = json.dumps([r.claim.pkey for r in mine])
                tokens = dict(self._run("hold", cur, task=task, pkeys=pkeys).fetchall())
                held |= {r.claim.id for r in mine if _same_token(tokens.get(r.claim.id), r.claim.token)}
            return held
        # SQLite: the transaction holds the write lock already.
        for r in sorted(results, key=lambda r: r.claim.pkey):
            if self._run("hold", cur, id=r.claim.id, token=uuid.UUID(r.claim.token)).fetchone():
                held.add(r.claim.id)
        return held

    def commit_held(self, cur: Any, held: Sequence[ExportResult]) -> set[int]:
        """In ``cur``'s transaction: record ``held`` (locked by :meth:`hold`); return the ids recorded."""
        if self.core.dialect is db.POSTGRESQL:  # one statement, one round trip for the batch
            rows = self._run(
                "commit_held",
                cur,
                ids=pg_array(r.claim.id for r in held),
                tokens=pg_array(r.claim.token for r in held),
                paths=pg_array(r.path for r in held),
                rows=pg_array(r.rows for r in held),
                bytes=pg_array(r.nbytes for r in held),
                checksums=pg_array(r.checksum for r in held),
                etags=pg_array(r.etag for r in held),
            ).fetchall()
            return {int(row[0]) for row in rows}
        if self.core.dialect is db.MARIADB:  # hold locked these rows under their tokens: one round trip
            cur.executemany(self.q["commit_held"], [self._commit_params(r) for r in held])
            return {r.claim.id for r in held}
        done = set()
        for r in sorted(held, key=lambda r: r.claim.pkey):  # the same lock order as mark()
            self._run(
                "commit_held", cur, id=r.claim.id, token=uuid.UUID(r.claim.token), path=r.path,
                rows=r.rows, bytes=r.nbytes, checksum=r.checksum, etag=r.etag,
            )  # fmt: skip
            if cur.rowcount == 1:
                done.add(r.claim.id)
        return done

    def _commit_params(self, r: ExportResult) -> dict[str, Any]:
        return self.core.params(
            id=r.claim.id, token=uuid.UUID(r.claim.token), path=r.path, rows=r.rows, bytes=r.nbytes,
            checksum=r.checksum, etag=r.etag,
        )  # fmt: skip

    def fail(
        self,
        claim: Claim,
        *,
        error: str,
        terminal: bool,
        max_attempts: int,
        backoff: float,
        counted: bool = True,
    ) -> bool:
        """Give ``claim`` back after an error; park it when terminal or out of attempts.

        ``counted``: whether this claim was an attempt (not when it is parked, unread, for the
        leases that expired before it)."""
        cur = self._run(
            "fail",
            id=claim.id,
            counted=int(counted),
            token=uuid.UUID(claim.token),
            error=error[:2000],
            terminal=terminal,
            max_attempts=max_attempts,
            backoff=backoff,
        )
        return bool(cur.rowcount == 1)

    def release(self, token: str) -> int:
        """Give back every partition still held under ``token``; return how many."""
        if self.core.dialect is not db.MARIADB:
            return int(self._run("release", token=uuid.UUID(token)).rowcount)

        def body(cur: Any) -> int:  # MariaDB: find the rows, then lock them in pkey order
            ids = [int(row[0]) for row in self._run("release", cur, token=uuid.UUID(token)).fetchall()]
            return self.release_rows(cur, ids, token=token)

        return self.core.in_transaction(body)

    def release_rows(self, cur: Any, ids: Sequence[int], *, token: str) -> int:
        """MariaDB/MySQL: give back ``ids`` if still held under ``token``, in that order."""
        return self._each(cur, self.q["release_rows"], ids, token=uuid.UUID(token))

    # ------------------------------------------------------------------ reporting and admin

    def status(self, task: PartitionKeys) -> TaskStatus:
        """Count the task's partitions by state."""
        zone = task.time.zone if task.time else None
        row = self._run("status", task=task.name, settle=_settle(task), zone=zone).fetchone()
        pending, claimed, exported, failed, waiting, retrying, age, other_zone = row
        return TaskStatus(
            task=task.name,
            pending=int(pending or 0),
            claimed=int(claimed or 0),
            exported=int(exported or 0),
            failed=int(failed or 0),
            waiting=int(waiting or 0),
            retrying=int(retrying or 0),
            oldest_pending_age=None if age is None else float(age),
            other_zone=int(other_zone or 0),
        )

    def failures(self, task: PartitionKeys, *, limit: int = 20) -> list[tuple[str, int, str]]:
        """Return ``(partition, attempts, last error)`` of parked partitions."""
        return [tuple(r) for r in self._run("failures", task=task.name, limit=limit).fetchall()]

    def partition_keys(self, task: PartitionKeys) -> list[tuple[int, dict[str, Any], Any, Any]]:
        """Every partition of a task: ``(id, keys, window start, window end)``."""
        return [
            (
                int(pid),
                _named(keys, pkey, task.key_names),
                self.core.from_ts(start),
                self.core.from_ts(end),
            )
            for pid, pkey, keys, start, end in self._run("partition_keys", task=task.name).fetchall()
        ]

    def reexport(self, task: PartitionKeys, accept: Callable[[dict[str, Any], Any, Any], bool]) -> int:
        """Queue again every partition for which ``accept(keys, win_start, win_end)`` is true."""
        chosen = [
            self.core.params(id=pid)
            for pid, keys, start, end in self.partition_keys(task)
            if accept(keys, start, end)
        ]
        if chosen:
            self.core.in_transaction(lambda cur: cur.executemany(self.q["reexport"], chosen))
        return len(chosen)

    def requeue(self, claims: Sequence[Claim]) -> None:
        """Queue the partitions of ``claims`` again (one more version, not forced), in pkey order
        (the lock order of marks: the order the pipeline lost them deadlocked with a fold)."""
        chosen = [self.core.params(id=c.id) for c in sorted(claims, key=lambda c: c.pkey)]
        if chosen:
            self.core.in_transaction(lambda cur: cur.executemany(self.q["requeue"], chosen))

    def other_zones(self, task: PartitionKeys, zone: str) -> int:
        """How many partitions of ``task`` were cut in another zone than ``zone`` (the task's)."""
        return int(self._run("other_zones", task=task.name, zone=zone).fetchone()[0])

    def relabel(self, ids: Sequence[int], zone: str) -> None:
        """Record the partitions ``ids``, whose windows in ``zone`` are the ones they have, as cut in it."""
        chosen = [self.core.params(id=pid, zone=zone) for pid in ids]
        if chosen:
            self.core.in_transaction(lambda cur: cur.executemany(self.q["relabel"], chosen))

    def reset_failed(self, task: PartitionKeys) -> int:
        """Re-queue the task's parked partitions; return how many."""
        if self.core.dialect is not db.MARIADB:
            return int(self._run("reset_failed", task=task.name).rowcount)

        def body(cur: Any) -> int:  # MariaDB: find the rows, then lock them in pkey order
            ids = [int(row[0]) for row in self._run("reset_failed", cur, task=task.name).fetchall()]
            return self.reset_failed_rows(cur, ids)

        return self.core.in_transaction(body)

    def reset_failed_rows(self, cur: Any, ids: Sequence[int]) -> int:
        """MariaDB/MySQL: re-queue ``ids`` if still parked, in that order."""
        return self._each(cur, self.q["reset_failed_rows"], ids)

    def key_samples(self, task: PartitionKeys, limit: int) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``limit`` of the task's partitions (any): their canonical key and named keys."""
        rows = self._run("key_samples", task=task.name, limit=limit).fetchall()
        return [(pkey, keys if isinstance(keys, dict) else json.loads(keys)) for pkey, keys in rows]

    def list_partitions(
        self, task: PartitionKeys, *, state: str | None, limit: int, offset: int
    ) -> list[dict[str, Any]]:
        """A page of the task's partitions with their state."""
        names = (
            "partition", "keys", "version", "exported_version", "attempts", "last_error", "path",
            "rows", "bytes", "exported_at", "window_start", "window_end", "state",
        )  # fmt: skip
        out = []
        cur = self._run(
            "list_partitions", task=task.name, state=state, limit=limit, offset=offset, settle=_settle(task)
        )
        for row in cur.fetchall():
            item = dict(zip(names, row, strict=True))
            item["keys"] = item["keys"] if isinstance(item["keys"], dict) else json.loads(item["keys"])
            for key in ("exported_at", "window_start", "window_end"):
                item[key] = self.core.from_ts(item[key])
            out.append(item)
        return out


def _named(keys: Any, pkey: str, names: Sequence[str]) -> dict[str, Any]:
    """A partition's key values (JSON text, or a dict) by the task's key names now: a key renamed
    since the row was recorded (``[time] name``) is read from the canonical key, its values in
    declared order; a row with another number of keys keeps the names it was recorded with."""
    named = keys if isinstance(keys, dict) else json.loads(keys)
    if set(named) == set(names):
        return dict(named)
    values = json.loads(pkey)
    return dict(zip(names, values, strict=True)) if len(values) == len(names) else dict(named)


def _same_token(stored: Any, token: str) -> bool:
    """Whether the token read from the ledger (text, or None) is ``token``."""
    return stored is not None and uuid.UUID(str(stored)) == uuid.UUID(token)
