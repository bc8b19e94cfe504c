"""Blocks of blocks tasks: one row per (task, key value, block, stage) with status, claim and counts.

The rules it enforces, in single SQL statements (``sql/<dialect>/blocks.sql``):

* rows are created when a range is asked for (``ensure``: insert, or keep what is there);
  nothing is pre-filled;
* a claim takes pending rows (or rows whose lease expired, counting an attempt) whose
  previous stage of the same block is ``done``, under a fresh token and a lease
  (``FOR UPDATE SKIP LOCKED`` on PostgreSQL and MariaDB, where it takes three statements in one
  transaction, ``BEGIN IMMEDIATE`` on SQLite): two runs never hold the same (block, stage);
* a commit (``done`` or ``no_data``) and a failure are fenced by the claim token, so a
  worker whose lease was taken over records nothing; ``no_data`` also completes the later
  stages of its block in the same transaction;
* a failure goes back to ``pending`` with exponential backoff, or is parked as ``failed``
  when terminal or out of attempts.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import db
from ..timeblocks import Block
from .claims import ClaimStore, lone_token

STATUSES = ("pending", "running", "done", "no_data", "failed")


@dataclass(frozen=True, kw_only=True)
class StageClaim:
    """One (block, stage) held by this worker until ``commit``, ``fail`` or ``release``."""

    id: int
    task: str
    key_value: str
    block: Block
    stage: str
    position: int
    attempts: int
    forced: bool
    token: str
    prev_artifact: str | None
    prev_checksum: str | None

    @property
    def reason(self) -> str:
        """Why it runs: new, retry, forced."""
        if self.forced:
            return "forced"
        return "retry" if self.attempts > 0 else "new"


@dataclass(frozen=True, kw_only=True)
class StageResult:
    """What a finished stage records: its status (done or no_data), counts and artifact."""

    claim: StageClaim
    status: str  # "done" or "no_data"
    total: int = 0
    processed: int = 0
    errors: int = 0
    duplicates: int = 0  # records a later one of their key replaced (in total, not processed; not stored)
    artifact: str | None = None
    bytes: int | None = None
    checksum: str | None = None
    error: str | None = None  # a done stage with some rejected records keeps their first error


@dataclass(frozen=True, kw_only=True)
class RangeQuery:
    """Which rows a call is about: a task, its key values, blocks ending in (time_min, time_max].

    ``key_values`` are the values the task has now (or the one asked for): rows of a value since
    removed from ``keys`` (or no longer returned by ``keys_sql``) are not claimed, reset or
    unparked. ``None``: every key value on the ledger."""

    task: str
    key_values: tuple[str, ...] | None
    time_min: dt.datetime | None
    time_max: dt.datetime | None


class BlockStore(ClaimStore):
    """Creating, claiming, committing and failing (block, stage) rows."""

    SQL = "blocks"

    def ensure(
        self, task: str, key_values: Sequence[str], blocks: Sequence[Block], stages: Sequence[str]
    ) -> int:
        """Create the missing rows of ``blocks`` x ``key_values`` x ``stages``; return how many were asked."""
        rows = [
            self.core.params(
                task=task,
                key_value=key,
                block_start=self.core.ts(block.start),
                block_end=self.core.ts(block.end),
                label=block.label,
                stage=stage,
                position=position,
            )
            for block in blocks
            for key in sorted(key_values)
            for position, stage in enumerate(stages)
        ]
        statement = self.q["ensure"]

        def insert(chunk: list[dict[str, Any]]) -> None:
            self.core.in_transaction(lambda cur: cur.executemany(statement, chunk))

        # short transactions (claims of other runs go on) of whole blocks: a run killed between two left
        # its newest block without some key values, and a scheduled tick asks for the blocks after it
        size = max(1, len(key_values) * len(stages))
        step = max(1, 2000 // size) * size
        for at in range(0, len(rows), step):
            insert(rows[at : at + step])
        return len(rows)

    def claim(
        self,
        where: RangeQuery,
        *,
        stages: Sequence[str],
        zone: str,
        grain: Any,
        limit: int,
        lease: float,
        taken: bool = False,
    ) -> list[StageClaim]:
        """Claim up to ``limit`` runnable (block, stage) rows, oldest block first: pending ones, or with
        ``taken`` rows of dead claims (running under an expired lease; an attempt only when the dead
        claim held the row alone from the start: a claim of one row has a :func:`lone_token`)."""
        first = lone_token() if limit == 1 else uuid.uuid4()
        params = self.core.params(
            **self._range(where),
            stages=self._list(stages),
            limit=limit,
            lease=lease,
            token=first,
            taken=taken,
        )

        rows, token = self._take_rows(self.q["claim"], params, first=first, lease=lease, relone=limit > 1)
        claims = [
            StageClaim(
                id=int(rid),
                task=where.task,
                key_value=key,
                stage=stage,
                position=int(position),
                block=Block(start=self._ts(start), end=self._ts(end), zone=zone, grain=grain),
                attempts=int(attempts),
                forced=bool(forced),
                token=token,
                prev_artifact=artifact,
                prev_checksum=checksum,
            )
            for rid, key, start, end, stage, position, attempts, forced, artifact, checksum in rows
        ]
        return sorted(claims, key=lambda c: (c.block.start, c.key_value, c.position))

    def renew(self, token: str, *, lease: float) -> int:
        """Extend the lease of the rows still held under ``token``; return how many."""
        return int(self._run("renew", token=uuid.UUID(token), lease=lease).rowcount)

    def commit(
        self,
        result: StageResult,
        *,
        cur: Any | None = None,
        forget: Callable[[str, str], None] | None = None,
    ) -> bool:
        """Record a finished stage (with ``no_data``, the block's later stages too); False: claim lost.

        With ``cur`` the record is written in that transaction (a load's, when its table is in
        the ledger database), so the rows and the record commit together. ``forget(stage,
        artifact)`` is called, in the transaction, for each later stage's artifact that a
        ``no_data`` makes the ledger forget (its file, published from rows now gone, is deleted).
        """
        claim = result.claim

        def body(cur: Any) -> bool:
            self._run(
                "commit",
                cur,
                id=claim.id,
                token=uuid.UUID(claim.token),
                status=result.status,
                error=result.error,
                total=result.total,
                processed=result.processed,
                errors=result.errors,
                artifact=result.artifact,
                bytes=result.bytes,
                checksum=result.checksum,
            )
            if cur.rowcount != 1:
                return False
            if result.status == "no_data":
                for stage, artifact in self.complete(claim, cur):
                    if forget is not None:
                        forget(stage, artifact)
            return True

        if cur is not None:
            return body(cur)
        return bool(self.core.in_transaction(body))

    def commit_placed(
        self,
        results: Sequence[StageResult],
        place: Callable[[Sequence[StageResult]], None],
        *,
        forget: Callable[[StageClaim], Callable[[str, str], None]],
    ) -> list[bool]:
        """Record finished stages whose files ``place(held)`` puts in place, in one transaction that
        first locks the rows still held under their claims: a claim taken over is neither placed
        nor recorded. If ``place`` raises, nothing is recorded. On a lost connection after the
        files were placed, the commit is tried again without placing them again."""
        placed: set[int] | None = None

        def body(cur: Any) -> set[int]:
            nonlocal placed
            ordered = sorted(results, key=lambda r: r.claim.id)
            held = [r for r in ordered if self.hold(cur, r.claim)]
            if placed is None:
                if held:
                    place(held)
                placed = {r.claim.id for r in held}
            return {
                r.claim.id
                for r in held
                if r.claim.id in placed and self.commit(r, cur=cur, forget=forget(r.claim))
            }

        recorded = self.core.in_transaction(body) if results else set()
        return [r.claim.id in recorded for r in results]

    def hold(self, cur: Any, claim: StageClaim) -> bool:
        """In ``cur``'s transaction: lock ``claim``'s row if it is still held under its token."""
        return self._run("hold", cur, id=claim.id, token=uuid.UUID(claim.token)).fetchone() is not None

    def complete(self, claim: StageClaim, cur: Any) -> list[tuple[str, str]]:
        """Mark the stages after ``claim`` in its block ``no_data`` (inside the commit's transaction);
        return the (stage, artifact) each of them had recorded, now cleared."""
        where = {
            "task": claim.task,
            "key_value": claim.key_value,
            "block_start": self.core.ts(claim.block.start),
            "position": claim.position,
        }
        stale = self.stale(cur, where)
        self._run("complete", cur, **where)
        return stale

    def extracted(self, claim: StageClaim, stage: str) -> str | None:
        """The artifact ``stage`` (the extract) recorded for ``claim``'s block, if it is done."""
        row = self._run(
            "extracted", task=claim.task, key_value=claim.key_value,
            block_start=self.core.ts(claim.block.start), stage=stage,
        ).fetchone()  # fmt: skip
        return str(row[0]) if row and row[0] else None

    def stale(self, cur: Any, where: dict[str, Any]) -> list[tuple[str, str]]:
        """The (stage, artifact) of the stages after a block's position (``complete``'s ``where``)."""
        return [(str(r[0]), str(r[1])) for r in self._run("stale", cur, **where).fetchall()]

    def fail(
        self,
        claim: StageClaim,
        *,
        error: str,
        terminal: bool,
        max_attempts: int,
        backoff: float,
        counts: tuple[int, int, int] | None = None,
        counted: bool = True,
    ) -> bool:
        """Give ``claim`` back after an error (backoff), or park it; ``counts``: total, processed, errors.
        ``counted``: whether this claim was an attempt (not when it is parked, unrun, for the leases
        that expired before it)."""
        total, processed, errors = counts if counts is not None else (None, None, None)
        cur = self._run(
            "fail",
            id=claim.id,
            token=uuid.UUID(claim.token),
            error=error[:2000],
            terminal=terminal,
            max_attempts=max_attempts,
            backoff=backoff,
            total=total,
            processed=processed,
            errors=errors,
            counted=int(counted),
        )
        return bool(cur.rowcount == 1)

    def release(self, token: str) -> int:
        """Give back every row still held under ``token`` without counting an attempt; return how many."""
        return int(self._run("release", token=uuid.UUID(token)).rowcount)

    def reset(self, where: RangeQuery, *, position: int) -> int:
        """``--force``: stages from ``position`` on are pending again, where the earlier ones are done."""
        return int(self._run("reset", **self._range(where), position=position).rowcount)

    def busy(self, where: RangeQuery, *, position: int) -> int:
        """How many blocks of the range have a stage from ``position`` on running under a live lease
        (``reset`` leaves those blocks alone)."""
        return int(self._run("busy", **self._range(where), position=position).fetchone()[0])

    def unpark(self, where: RangeQuery, *, stages: Sequence[str]) -> int:
        """``--incomplete-only``: the range's parked stages among ``stages`` are pending again."""
        return int(self._run("unpark", **self._range(where), stages=self._list(stages)).rowcount)

    # ------------------------------------------------------------------ reporting

    def rows(self, where: RangeQuery) -> list[dict[str, Any]]:
        """The rows of a range: key value, block window and label, stage, status, attempts, lease state
        (``alone``: the only row its claim holds, so that taking it over counts an attempt)."""
        names = (
            "key_value",
            "block_start",
            "block_end",
            "label",
            "stage",
            "position",
            "status",
            "attempts",
            "expired",
            "backing_off",
            "alone",
        )
        out = []
        for row in self._run("rows", **self._range(where)).fetchall():
            item = dict(zip(names, row, strict=True))
            item["block_start"], item["block_end"] = self._ts(row[1]), self._ts(row[2])
            item.update(
                expired=bool(item["expired"]),
                backing_off=bool(item["backing_off"]),
                alone=bool(item["alone"]),
            )
            out.append(item)
        return out

    def spans(self, where: RangeQuery) -> list[tuple[dt.datetime, dt.datetime]]:
        """The distinct ``(block_start, block_end)`` of a range's rows (UTC)."""
        return [(self._ts(a), self._ts(b)) for a, b in self._run("spans", **self._range(where)).fetchall()]

    def frontier(self, task: str) -> dt.datetime | None:
        """The end of the newest block the ledger holds for ``task`` (UTC), None when it holds none."""
        row = self._run("frontier", task=task).fetchone()
        return None if row is None or row[0] is None else self._ts(row[0])

    def counts(self, task: str) -> dict[str, dict[str, Any]]:
        """Per stage, in stage order: rows per status and the records rejected by loads."""
        out: dict[str, dict[str, Any]] = {}
        for stage, _position, status, count, errors in self._run("counts", task=task).fetchall():
            entry = out.setdefault(stage, {s: 0 for s in STATUSES} | {"record_errors": 0})
            entry[status] = int(count)
            entry["record_errors"] += int(errors or 0)
        return out

    def failures(self, task: str, *, limit: int = 20) -> list[dict[str, Any]]:
        """The parked rows with their error: key value, block label, stage, attempts, error."""
        names = ("key_value", "block", "stage", "attempts", "error")
        return [dict(zip(names, row, strict=True)) for row in self._run("failures", task=task, limit=limit)]

    def list_rows(self, task: str, *, status: str | None, limit: int, offset: int) -> list[dict[str, Any]]:
        """A page of a task's rows with everything recorded on them."""
        names = (
            "key_value",
            "block",
            "block_start",
            "block_end",
            "stage",
            "status",
            "attempts",
            "error",
            "artifact",
            "records_total",
            "records_processed",
            "records_errors",
            "bytes",
            "started_at",
            "finished_at",
        )
        cur = self._run("list_rows", task=task, status=status, limit=limit, offset=offset)
        out = []
        for row in cur.fetchall():
            item = dict(zip(names, row, strict=True))
            for name in ("block_start", "block_end", "started_at", "finished_at"):
                item[name] = self.core.from_ts(item[name])
            out.append(item)
        return out

    # ------------------------------------------------------------------ values

    def _range(self, where: RangeQuery) -> dict[str, Any]:
        return {
            "task": where.task,
            "key_values": None if where.key_values is None else self._list(where.key_values),
            "time_min": self.core.ts(where.time_min),
            "time_max": self.core.ts(where.time_max),
        }

    def _list(self, values: Iterable[str]) -> Any:
        """A list parameter: an array on PostgreSQL, a JSON array elsewhere."""
        return list(values) if self.core.dialect is db.POSTGRESQL else json.dumps(list(values))

    def _ts(self, value: Any) -> dt.datetime:
        parsed = self.core.from_ts(value)
        assert parsed is not None
        return parsed.astimezone(dt.UTC)
