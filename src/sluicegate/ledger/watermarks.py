"""Watermarks of incremental tasks: one row per (task, entity), claimed, advanced compare-and-set.

A claim takes the rows no claim holds; a row of a dead claim (its lease expired) is taken over
alone (:meth:`WatermarkStore.take_over`), an attempt only when the dead claim held it alone from
the start (a claim of one entity, such as a take-over, has a lone token). One
taken over with no attempt left is parked (:meth:`WatermarkStore.park`): held by a dead claim
whose lease ended at the epoch, which nothing takes (a raised ``max_attempts`` neither) until
``sluicegate reset TASK --failed`` clears its attempts.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from .. import db
from .claims import ClaimStore, lone_token

# The fields of each row WatermarkStore.entities returns (watermark list).
ENTITY_FIELDS = (
    "entity", "watermark", "pending_start", "pending_end", "pending_type", "attempts", "last_error",
    "failed_start", "failed_end", "failed_type", "failed_mode", "failed_destination", "exported_at",
    "rows", "path", "claimed", "held", "parked",
)  # fmt: skip


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
    path: str | None = None  # the entity's last file (an earlier window's)


def _token(token: str | None) -> uuid.UUID | None:
    return None if token is None else uuid.UUID(token)


class WatermarkStore(ClaimStore):
    """The per-(task, entity) watermarks, on the ledger database."""

    SQL = "watermarks"

    def ensure(self, task: str, entities: Sequence[str]) -> None:
        """Create missing watermark rows (no watermark: the bootstrap applies)."""
        rows = [self.core.params(task=task, entity=e) for e in sorted(entities)]
        if rows:
            self.core.in_transaction(lambda cur: cur.executemany(self.q["ensure"], rows))

    def claim(self, task: str, entities: Sequence[str], *, lease: float) -> list[WatermarkClaim]:
        """Claim the watermark rows of ``entities`` no claim holds; held rows are skipped (a dead
        claim's too: :meth:`take_over`)."""
        return self._take(task, self.q["claim"], entities, lease=lease)

    def take_over(
        self, task: str, entities: Sequence[str], *, lease: float, max_attempts: int
    ) -> list[WatermarkClaim]:
        """Claim one row of a dead claim (held under an expired lease) of ``entities``, the oldest
        death first, in a claim of its own: one entity that kills its worker then takes down no
        other. It counts as an attempt only when the dead claim held it alone from the start (its
        token is a :func:`lone_token`), its window stored, not when it is the last one left of a
        dead batch. A row with ``max_attempts`` attempts or more is parked, as is one :meth:`park`
        parked: not taken."""
        statement = self.q["take_over"]
        return self._take(task, statement, entities, lease=lease, max_attempts=max_attempts, one=True)

    def _take(
        self, task: str, statement: str, entities: Sequence[str], *, lease: float, max_attempts: int = 0,
        one: bool = False,
    ) -> list[WatermarkClaim]:  # fmt: skip
        one = one or len(entities) == 1  # a claim of one row at most (a take-over's): a lone token
        first = lone_token() if one else uuid.uuid4()
        wanted: Any = list(entities) if self.core.dialect is db.POSTGRESQL else json.dumps(list(entities))
        params = self.core.params(
            task=task, entities=wanted, token=first, lease=lease, max_attempts=max_attempts
        )

        rows, token = self._take_rows(statement, params, first=first, lease=lease, relone=not one)
        ts = self.core.from_ts
        out = [
            WatermarkClaim(
                id=int(r[0]),
                entity=str(r[1]),
                watermark=ts(r[2]),
                pending_start=ts(r[3]),
                pending_end=ts(r[4]),
                pending_type=r[5],
                attempts=int(r[6]),
                token=token,
                path=r[7],
            )
            for r in rows
        ]
        return sorted(out, key=lambda c: c.entity)

    def set_pending(
        self, claim: WatermarkClaim, start: dt.datetime, end: dt.datetime, export_type: str
    ) -> None:
        """Remember the window being exported under ``claim``."""
        self._run(
            "set_pending",
            id=claim.id,
            token=_token(claim.token),
            start=self.core.ts(start),
            end=self.core.ts(end),
            type=export_type,
        )

    def commit(self, claim: WatermarkClaim, *, end: dt.datetime, rows: int, path: str | None) -> bool:
        """Advance the watermark to ``end`` (never backwards); False when the claim was lost."""
        cur = self._run(
            "commit", id=claim.id, token=_token(claim.token), end=self.core.ts(end), rows=rows, path=path
        )
        return bool(cur.rowcount == 1)

    def holds(self, claim: WatermarkClaim) -> bool:
        """Whether ``claim`` still holds its row (checked once its window is stored)."""
        return bool(self._run("holds", id=claim.id, token=_token(claim.token)).fetchone()[0])

    def fail(
        self,
        task: str,
        entity: str,
        *,
        token: str | None,
        error: str,
        start: dt.datetime,
        end: dt.datetime,
        export_type: str,
        mode: str,
        destination: str | None = None,
    ) -> bool:
        """Record a failed window for redrive: a watermark window under its claim (which stays the
        entity's pending window), or a re-export with its override destination (no claim).
        False: a re-export not recorded, because the entity owes another one (see fail_reexport)."""
        window = {"start": self.core.ts(start), "end": self.core.ts(end), "type": export_type}
        if mode == "reexport":  # an entity never exported still gets a row, so redrive sees it
            self.ensure(task, [entity])
            return self.fail_reexport(task, entity, error=error, destination=destination, **window)
        self.fail_window(task, entity, token=token, error=error, **window)
        return True

    def fail_window(self, task: str, entity: str, *, token: str | None, error: str, **window: Any) -> None:
        """Record a failed watermark window; the claim is given back, the window stays pending."""
        self._run("fail_window", task=task, entity=entity, token=_token(token), error=error[:2000], **window)

    def park(
        self, claim: WatermarkClaim, *, error: str, start: dt.datetime, end: dt.datetime, export_type: str
    ) -> None:
        """Park an entity taken over with no attempt left: its window recorded as failed with
        ``error``, its row left to a dead claim whose lease ended at the epoch, which no claim or
        take-over takes, whatever ``max_attempts`` says then, until :meth:`reset_failed`."""
        window = {"start": self.core.ts(start), "end": self.core.ts(end), "type": export_type}
        self._run("park", id=claim.id, token=_token(claim.token), error=error[:2000], **window)

    def reset_failed(self, task: str) -> int:
        """Clear the attempts of ``task``'s entities no live claim holds: a parked one is taken over
        again, a failed window redrive gave up on is retried. Return how many."""
        return int(self._run("reset_failed", task=task).rowcount)

    def fail_reexport(
        self, task: str, entity: str, *, error: str, destination: str | None, **window: Any
    ) -> bool:
        """Record a failed re-export (its window and destination); claims are left alone. False
        when the entity owes a failed re-export of another window or destination: that one is kept."""
        cur = self._run(
            "fail_reexport", task=task, entity=entity, error=error[:2000], destination=destination, **window
        )
        return bool(cur.rowcount == 1)

    def clear_failure(self, task: str, entity: str) -> None:
        """Forget a recorded failure (its window was exported)."""
        self._run("clear_failure", task=task, entity=entity)

    def clear_reexport(self, task: str, window: Any) -> int:
        """Forget the failed re-export of this :class:`~sluicegate.watermarks.Window` (its entity,
        span, type and destination: redriven), and no other; return how many rows it cleared."""
        return int(
            self._run(
                "clear_reexport", task=task, entity=window.entity, start=self.core.ts(window.start),
                end=self.core.ts(window.end), type=window.export_type, destination=window.destination,
            ).rowcount
        )  # fmt: skip

    def release_one(self, claim: WatermarkClaim) -> None:
        """Give back one watermark row without exporting (an empty window)."""
        self._run("release_one", id=claim.id, token=_token(claim.token))

    def renew(self, token: str, *, lease: float) -> int:
        """Extend the lease of the watermark rows held under ``token``; return how many."""
        if self.core.dialect is not db.MARIADB:
            return int(self._run("renew", token=_token(token), lease=lease).rowcount)

        def body(cur: Any) -> int:  # MariaDB: lock the rows no one else holds, then extend them
            ids = [int(row[0]) for row in self._run("renew", cur, token=_token(token)).fetchall()]
            return self.renew_rows(cur, ids, token=token, lease=lease)

        return self.core.in_transaction(body)

    def renew_rows(self, cur: Any, ids: Sequence[int], *, token: str, lease: float) -> int:
        """MariaDB/MySQL: extend the leases of ``ids`` (locked by ``renew``) still held under ``token``."""
        if not ids:
            return 0
        cur.executemany(
            self.q["renew_rows"], [self.core.params(id=i, token=_token(token), lease=lease) for i in ids]
        )
        return int(cur.rowcount)

    def release(self, token: str) -> int:
        """Give back every watermark row held under ``token``."""
        return int(self._run("release", token=_token(token)).rowcount)

    def charged_on_take_over(self, task: str, entities: Collection[str], max_attempts: int) -> set[str]:
        """The entities of dead claims that a run taking over ``entities`` (as :meth:`take_over`
        does) would charge an attempt: each its dead claim held alone from the start (a lone
        token), its window stored, with an attempt left and no failed re-export owed."""
        rows = self._run("charged_on_take_over", task=task).fetchall()
        return {
            str(entity)
            for entity, token, stored, attempts, reexport, parked in rows
            if entity in entities and str(token)[14] == "8" and stored and not reexport and not parked
            and int(attempts) < max_attempts
        }  # fmt: skip

    def entities(self, task: str) -> list[dict[str, Any]]:
        """Every watermark row of ``task`` as a dict."""
        out = []
        for row in self._run("entities", task=task).fetchall():
            item = dict(zip(ENTITY_FIELDS, row, strict=True))
            times = ("watermark", "pending_start", "pending_end", "failed_start", "failed_end", "exported_at")
            for key in times:
                item[key] = self.core.from_ts(item[key])
            item["claimed"], item["held"], item["parked"] = (
                bool(item[k]) for k in ("claimed", "held", "parked")
            )
            out.append(item)
        return out

    def delete(self, task: str, entity: str) -> bool:
        """Delete an entity's watermark; True when there was one."""
        return bool(self._run("delete", task=task, entity=entity).rowcount)
