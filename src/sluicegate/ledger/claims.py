"""What a claim of a partition holds, and what its durable export records (``ledger/partitions.py``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import db
from .core import Store


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
    prev_etag: str | None = None  # the store's ETag of the published object, when it gives one

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
    etag: str | None = None
    remove: str | None = None  # a recorded file its export deletes (it has no rows now)


# Puts the files of the held results in place; returns them as they are to be recorded.
Place = Callable[[Sequence[ExportResult]], Sequence[ExportResult]]


class PathTaken(NamedTuple):
    """A partition that recorded a file, and what it recorded of it."""

    path: str
    pkey: str
    zone: str | None
    moving: bool  # queued to export again, not parked
    nbytes: int | None = None  # its size, SHA-256 and the store's ETag, when recorded: a file found
    checksum: str | None = None  # at the path that is not this one is not the partition's any more
    etag: str | None = None


# Given the held results and the partitions that recorded one of the files they write or delete,
# returns those that may take their files (the others are neither placed nor recorded), without
# the deletion of a file another partition recorded.
Vet = Callable[[Sequence[ExportResult], list[PathTaken]], Sequence[ExportResult]]


def lone_token() -> uuid.UUID:
    """A claim token for a claim of one unit (a partition, a block's stage): a random UUID of
    version 8 (``uuid4`` gives version 4), so a take-over tells from the token alone whether the
    dead claim held the unit on its own (its 15th character is ``8``), or as one of a batch."""
    return _versioned(0x8)


def second_token() -> uuid.UUID:
    """A claim token for a dead batch's partitions taken over together, their second chance: a
    random UUID of version 7 (its 15th character is ``7``). A partition whose claim of this kind
    dies too is taken over alone from then on (see ``PartitionStore.take_over``), uncounted."""
    return _versioned(0x7)


def _versioned(version: int) -> uuid.UUID:
    """A random UUID whose version digit (the 15th character) is ``version``."""
    return uuid.UUID(int=uuid.uuid4().int & ~(0xF << 76) | (version << 76))


class ClaimStore(Store):
    """A store of units claimed under a token and a lease (partitions, blocks' stages, watermark
    rows): the one claim transaction they share, and the three statements it runs besides the
    claim: ``lone``, and on MariaDB/MySQL ``claim_take`` and ``claimed``."""

    def _take_rows(
        self, statement: str, params: Any, *, first: uuid.UUID, lease: float, relone: bool
    ) -> tuple[list[Any], str]:
        """Run ``statement`` (a claim or a take-over; ``params`` holding ``first`` as its token)
        in one transaction: the rows it took, and the token they are held under. ``relone``: a
        claim (or a take-over of dead batches) that finds one unit puts it under a
        :func:`lone_token` (not a take-over of one, whose ``first`` is lone already)."""
        token = first

        def take(cur: Any) -> list[Any]:
            nonlocal token
            token = first  # not a lone token of a try the server rolled back (it runs again)
            cur.execute(statement, params)  # MariaDB's execute returns None, not the cursor
            rows = list(cur.fetchall())
            if len(rows) == 1 and relone:
                token = lone_token()
                if self.core.dialect is not db.MARIADB:
                    self.lone(cur, int(rows[0][0]), token=first, lone=token)
            if self.core.dialect is not db.MARIADB:  # UPDATE ... RETURNING took them
                return rows
            # MariaDB/MySQL have no UPDATE ... RETURNING: lock (SKIP LOCKED), take, read back.
            if not rows:
                return []
            alone = {int(row[0]): len(row) > 1 and bool(row[1]) for row in rows}
            self.claim_take(cur, alone, token=str(token), lease=float(lease))
            return self.claimed(cur, str(token))

        # PostgreSQL: BEGIN goes with the claim, and lone's UPDATE with the COMMIT
        rows = self.core.in_transaction(take, pipelined=True)
        return rows, str(token)

    def lone(self, cur: Any, uid: int, *, token: uuid.UUID, lone: uuid.UUID) -> None:
        """PostgreSQL and SQLite: put the one unit a claim took under a :func:`lone_token`."""
        self._run("lone", cur, id=uid, token=token, lone=lone)

    def claim_take(self, cur: Any, alone: dict[int, bool], *, token: str, lease: float) -> None:
        """MariaDB/MySQL: put the rows a claim or take-over locked (id: whether a dead claim held it
        alone from the start) under ``token`` and a lease (one round trip)."""
        cur.executemany(
            self.q["claim_take"],
            [{"id": i, "alone": int(a), "token": token, "lease": lease} for i, a in alone.items()],
        )

    def claimed(self, cur: Any, token: str) -> list[Any]:
        """MariaDB/MySQL: the rows held under ``token``, as a claim returns them."""
        return list(self._run("claimed", cur, token=token).fetchall())
