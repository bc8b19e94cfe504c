"""Partitions of partitioned tasks: one row per (task, partition) with version, claim and result.

The rules it enforces, all in single SQL statements (``sql/<dialect>/partitions.sql``):

* a change bumps ``version``; a partition is pending while ``version > exported_version``;
* a claim takes pending, complete partitions oldest change first (then oldest window first), under
  a fresh token and a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL and MariaDB, there in three
  statements in one transaction, ``BEGIN IMMEDIATE`` on SQLite); the partitions of a dead batch
  (its lease expired) are taken over together once more, a second chance, and a partition of a
  dead claim that held it alone, or of a dead second chance, is taken over alone: an attempt only
  when the dead claim held it alone;
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
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from .. import db, paths
from ..exceptions import LedgerError, UsageError
from ..partitions import Partition, PartitionKeys
from .claims import Claim, ClaimStore, ExportResult, PathTaken, Place, Vet, lone_token, second_token
from .core import pg_array
from .partition_admin import PartitionAdmin, named_keys, settle_seconds

log = logging.getLogger("sluicegate.capture")
# The longest partition key (canonical JSON text) a ledger's pkey column holds: VARCHAR(512) on
# MariaDB (sql/mariadb/schema.sql, within InnoDB's key length); text elsewhere.
PKEY_CHARS = {db.MARIADB: 512}


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


class PartitionStore(PartitionAdmin, ClaimStore):
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

    def claim(self, task: PartitionKeys, *, limit: int, lease: float, lone: bool = True) -> list[Claim]:
        """Claim up to ``limit`` pending, complete partitions of ``task`` (none held by a claim).
        ``lone``: the caller has nothing else in flight, and exports a claim of one partition with
        nothing else in flight, so it takes it under a :func:`lone_token`; else a batch token."""
        return self._take(task, self.q["claim"], limit=limit, lease=lease, lone=lone)

    def take_over(
        self, task: PartitionKeys, *, lease: float, lone: bool = True, batch: int = 0
    ) -> list[Claim]:
        """Claim partitions of dead claims (held under an expired lease), oldest change first.

        Without ``batch``: one partition whose dead claim held it alone, or as a dead batch's second
        chance, in a claim of its own: one partition that kills its worker then takes down no
        other. It counts as an attempt only when the dead claim held it alone from the start (its
        token is a :func:`lone_token`: it died on its own), not when a second chance died.
        With ``batch``: up to ``batch`` partitions of dead batches (claims of several partitions),
        together under a :func:`second_token`, uncounted (nothing tells which partition of a dead
        batch killed it): an innocent crash (a deploy, a reboot) recovers at batch speed, and if
        this claim dies too, each of its partitions is taken over alone.
        ``lone`` as for :meth:`claim`; one partition taken over while other files are in flight
        is not lone, and goes under a :func:`second_token`: a death then is taken over alone again."""
        return self._take(
            task, self.q["take_over"], limit=batch or 1, lease=lease, lone=lone, singles=not batch
        )

    def _take(
        self,
        task: PartitionKeys,
        statement: str,
        *,
        limit: int,
        lease: float,
        lone: bool,
        singles: bool | None = None,
    ) -> list[Claim]:
        """Run a claim (``singles`` None) or a take-over of dead claims held alone or a second time
        (``singles``), or of dead batches (not ``singles``)."""
        batch = uuid.uuid4 if singles is None else second_token  # a take-over's: a second chance
        first = lone_token() if limit == 1 and lone else batch()
        params = self.core.params(
            task=task.name, limit=limit, lease=lease, settle=settle_seconds(task), token=first
        )
        if singles is not None:
            params["singles"] = singles
        rows, token = self._take_rows(statement, params, first=first, lease=lease, relone=limit > 1 and lone)
        claims = [self._claim_from_row(task, row, token) for row in rows]
        # RETURNING order is not guaranteed: export a batch in id order (the order of first marks).
        return sorted(claims, key=lambda c: c.id)

    def pending(self, task: PartitionKeys, *, limit: int) -> list[Claim]:
        """Return what the next claim would take, without claiming (for ``--dry-run``)."""
        cur = self._run("pending", task=task.name, limit=limit, settle=settle_seconds(task))
        return [self._claim_from_row(task, row, "") for row in cur.fetchall()]

    def paths_taken(self, task: str, paths: Collection[str], cur: Any = None) -> list[PathTaken]:
        """The task's partitions that recorded one of ``paths``, with what they recorded of the file;
        ``moving``: queued to export again, not parked."""
        if not paths:
            return []
        chosen = pg_array(paths) if self.core.dialect is db.POSTGRESQL else json.dumps(list(paths))
        rows = self._run("paths_taken", cur, task=task, paths=chosen).fetchall()
        # exact (MariaDB pads)
        return [
            PathTaken(path, pkey, zone, bool(moving), None if nbytes is None else int(nbytes), checksum, etag)
            for path, pkey, zone, moving, nbytes, checksum, etag in rows
            if path in paths
        ]

    def lock_paths(self, cur: Any, results: Sequence[ExportResult], names: list[str]) -> None:
        """In ``cur``'s transaction: lock the files of ``results`` (those they write or delete) until
        it ends, waiting for another worker's commit of one of them (SQLite: the transaction's write
        lock does). MariaDB's locks last until :meth:`unlock_paths` frees ``names``."""
        digests = sorted(
            {
                hashlib.sha256(f"{r.claim.task}/{path}".encode()).hexdigest()
                for r in results
                for path in _files(r)
            }
        )
        if self.core.dialect is db.POSTGRESQL and digests:
            self._run("lock_paths", cur, keys=pg_array(int(d[:16], 16) - (1 << 63) for d in digests))
        elif self.core.dialect is db.MARIADB and digests:
            names += [f"sluicegate file {d[:40]}" for d in digests]
            if any(got != 1 for (got,) in self._run("lock_paths", cur, names=json.dumps(names)).fetchall()):
                named = next(r for r in results if _files(r))  # a partition without rows has no file
                raise LedgerError(
                    f"another worker held one of the files of task {named.claim.task} this batch was to"
                    f" put in place (such as {_files(named)[0]}) for 10 s; its partitions are given back,"
                    " and the next run exports them"
                )

    def unlock_paths(self, names: list[str]) -> None:
        """MariaDB: free the locks of files :meth:`lock_paths` took on this connection."""
        self._run("unlock_paths", names=json.dumps(names)).fetchall()

    def _claim_from_row(self, task: PartitionKeys, row: Sequence[Any], token: str) -> Claim:
        pid, pkey, keys, zone, version, attempts, forced, exported, path, nbytes, checksum, etag = row
        return Claim(
            id=int(pid), task=task.name, pkey=pkey, keys=named_keys(keys, pkey, task.key_names), zone=zone,
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
        of the ones another partition of the task recorded are placed and recorded (on a retry,
        locked and vetted again: the lost connection's locks went with it, and another worker may
        have recorded one of the files since, its file replacing ours).
        Returns, per result, whether it was recorded.
        """
        if not results:
            return []
        placed: Sequence[ExportResult] | None = None
        names: list[str] = []  # MariaDB's locks of the files

        def body(cur: Any) -> set[int]:
            nonlocal placed
            held_ids, taken = self.hold(cur, results), list[PathTaken]()
            if placed is None:
                held = self._vetted(cur, [r for r in results if r.claim.id in held_ids], vet, names, taken)
                placed = place(held) if place is not None and held else held
                chosen = placed
            else:  # a retry on a new connection: the files are in place already, but the locks of
                # them went with the lost connection: another worker may have recorded one since
                chosen = self._vetted(cur, [r for r in placed if r.claim.id in held_ids], vet, names, taken)
            done = self.commit_held(cur, chosen) if chosen else set()
            # Only a path another partition recorded has a row to forget: none, but after a change.
            writer = {r.path: (r.claim.pkey, r.claim.zone) for r in chosen if r.claim.id in done and r.path}
            others = {t.path for t in taken if writer.get(t.path, (t.pkey, t.zone)) != (t.pkey, t.zone)}
            self.give_up(cur, [r for r in chosen if r.claim.id in done and r.path in others])
            return done

        try:
            recorded = self.core.in_transaction(body, pipelined=True)
        finally:
            if names:
                self.unlock_paths(names)
        return [r.claim.id in recorded for r in results]

    def _vetted(
        self,
        cur: Any,
        held: Sequence[ExportResult],
        vet: Vet | None,
        names: list[str],
        taken: list[PathTaken],
    ) -> Sequence[ExportResult]:
        """With ``vet``: lock the files of ``held``, then keep those ``vet`` keeps of them, given the
        partitions that recorded one of them (added to ``taken``)."""
        if vet is None or not held:
            return held
        self.lock_paths(cur, held, names)
        taken += self.paths_taken(held[0].claim.task, {p for r in held for p in _files(r)}, cur)
        return vet(held, taken)

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

    def give_up(self, cur: Any, written: Sequence[ExportResult]) -> None:
        """In ``cur``'s transaction: forget the file of every other partition of the task that
        recorded a path one of ``written`` (just recorded) wrote. After a path template change a
        partition queued to move gives its old file up (see ``partitioned_paths._holds``); parked
        instead of moved, its row named another partition's file, and refused that one's own
        export of it as "stale" for good."""
        if not written:
            return
        if self.core.dialect is db.POSTGRESQL:
            for task in sorted({r.claim.task for r in written}):
                mine = [r for r in written if r.claim.task == task]
                self._run(
                    "give_up", cur, task=task, paths=pg_array(r.path for r in mine),
                    ids=pg_array(r.claim.id for r in mine),
                )  # fmt: skip
            return
        rows = [self.core.params(task=r.claim.task, path=r.path, id=r.claim.id) for r in written]
        cur.executemany(self.q["give_up"], rows)

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


def _files(result: ExportResult) -> list[str]:
    """The files a result writes or deletes."""
    return [p for p in (result.path, result.remove) if p]


def _same_token(stored: Any, token: str) -> bool:
    """Whether the token read from the ledger (text, or None) is ``token``."""
    return stored is not None and uuid.UUID(str(stored)) == uuid.UUID(token)
