"""What a claim of a partition holds, and what its durable export records (``ledger/partitions.py``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


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
# A partition that recorded a file: (path, pkey, zone, moving: queued to export again, not parked).
PathTaken = tuple[str, str, str | None, bool]
# Given the held results and the partitions that recorded one of the files they write or delete,
# returns those that may take their files (the others are neither placed nor recorded), without
# the deletion of a file another partition recorded.
Vet = Callable[[Sequence[ExportResult], list[PathTaken]], Sequence[ExportResult]]


def lone_token() -> uuid.UUID:
    """A claim token for a claim of one unit (a partition, a block's stage): a random UUID of
    version 8 (``uuid4`` gives version 4), so a take-over tells from the token alone whether the
    dead claim held the unit on its own (its 15th character is ``8``), or as one of a batch."""
    return uuid.UUID(int=uuid.uuid4().int & ~(0xF << 76) | (0x8 << 76))
