"""Reporting and admin of partitions (``status``, ``list``, ``reset``, ``reexport`` and zones):
the statements of ``sql/<dialect>/partitions.sql`` that neither claim nor commit. The
:class:`~sluicegate.ledger.partitions.PartitionStore` (marks, claims, commits) builds on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import db
from ..partitions import PartitionKeys
from .claims import Claim
from .core import Store


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


def settle_seconds(task: PartitionKeys) -> float:
    """How long after its window ends a partition of ``task`` is complete (seconds)."""
    return task.time.settle if task.time else 0.0


class PartitionAdmin(Store):
    """Counts, listings, re-queues and zone labels of a task's partitions."""

    SQL = "partitions"

    def _each(self, cur: Any, statement: str, ids: Sequence[int], **params: Any) -> int:
        """Run ``statement`` for each of ``ids`` in that order (one round trip); return the rows changed."""
        if not ids:
            return 0
        cur.executemany(statement, [self.core.params(id=i, **params) for i in ids])
        return int(cur.rowcount)

    def status(self, task: PartitionKeys) -> TaskStatus:
        """Count the task's partitions by state."""
        zone = task.time.zone if task.time else None
        row = self._run("status", task=task.name, settle=settle_seconds(task), zone=zone).fetchone()
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
                named_keys(keys, pkey, task.key_names),
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

    def stale_claims(self, task: PartitionKeys, *, lease: float) -> tuple[int, float | None]:
        """How many of the task's claims were not renewed for over half of ``lease`` (their worker
        stopped or died), and the seconds until the last of their leases ends (None: no such claim)."""
        count, left = self._run("stale_claims", task=task.name, lease=lease).fetchone()
        return int(count or 0), None if left is None else max(float(left), 0.0)

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
            "list_partitions",
            task=task.name,
            state=state,
            limit=limit,
            offset=offset,
            settle=settle_seconds(task),
        )
        for row in cur.fetchall():
            item = dict(zip(names, row, strict=True))
            item["keys"] = item["keys"] if isinstance(item["keys"], dict) else json.loads(item["keys"])
            for key in ("exported_at", "window_start", "window_end"):
                item[key] = self.core.from_ts(item[key])
            out.append(item)
        return out


def named_keys(keys: Any, pkey: str, names: Sequence[str]) -> dict[str, Any]:
    """A partition's key values (JSON text, or a dict) by the task's key names now: a key renamed
    since the row was recorded (``[time] name``) is read from the canonical key, its values in
    declared order; a row with another number of keys keeps the names it was recorded with."""
    named = keys if isinstance(keys, dict) else json.loads(keys)
    if set(named) == set(names):
        return dict(named)
    values = json.loads(pkey)
    return dict(zip(names, values, strict=True)) if len(values) == len(names) else dict(named)
