"""Work units and their outcomes: what a driver hands the pipeline, and what comes back.

A :class:`WorkUnit` is one file's worth of rows (what to read, where to write, the claim that
covers it); an :class:`Outcome` is its durable file, ready to record; a :class:`Recorder` is
where a driver records outcomes (its ledger store). See ``pipeline.py`` for the steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .destinations import Destination, Staged
from .exceptions import ExportError, SluicegateError
from .sources import Slice

log = logging.getLogger("sluicegate")


@dataclass(frozen=True, kw_only=True)
class Previous:
    """A unit's last export: an unchanged file (same path and SHA-256) is not uploaded again."""

    path: str | None
    checksum: str | None
    etag: str | None = None  # the store's ETag of that file, when the store gives one


@dataclass(frozen=True, kw_only=True)
class WorkUnit:
    """One file's worth of rows: what to read, where to write, and the driver's handle on it."""

    key: str  # the unit's identity in errors and counts (a partition key, an entity, a run)
    slice: Slice  # what to read (key values, window, zone)
    path: str  # where to write, relative to the destination
    token: str = ""  # the claim token whose lease covers the unit ("" for none)
    previous: Previous | None = None  # None: always publish
    fenced: bool = False  # its upload is conditional on the previous file (see destinations)
    handle: Any = None  # the driver's own record of the unit (a claim, a window, a run)
    keys: Mapping[str, Any] | None = None  # what the change feed names it by (partition keys ...)
    version: Any = None  # ... and which version of it the file holds
    empty_file: bool = False  # write a file even when it has no rows (an archive run: the header)
    refuse_file: str | None = None  # why it may not write its file (another unit's): fails on a first row
    exclusive: str | None = None  # why it may not replace a file at its path: it fails if one appears


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """A unit's file, durable at its path (or no file: the unit has no rows), ready to record."""

    unit: WorkUnit
    path: str | None
    rows: int
    nbytes: int
    checksum: str | None
    published: bool  # False: the bytes were unchanged and the upload skipped
    remove: str | None = None  # a previous file to delete when the outcome is placed (no rows now)
    staged: Staged | None = field(default=None, repr=False, compare=False)

    @property
    def etag(self) -> str | None:
        """The store's ETag of the file, once it is in place (the previous one when unchanged)."""
        if self.staged is not None and self.staged.etag:
            return self.staged.etag
        previous = self.unit.previous
        return previous.etag if previous and not self.published and self.path == previous.path else None

    def left_behind(self, destination: Destination) -> bool:
        """Whether the object this outcome uploaded is still at its path (when unsure: yes).

        Asked of a claim lost at its commit: an upload can land anyway (S3: If-None-Match: *
        after the new owner committed the unit with no rows, deleting nothing), leaving an
        object that nobody records and that the change feed never lists.
        """
        staged = self.staged
        if staged is None or not staged.etag or staged.pending or self.path is None:
            return False
        try:
            return destination.exists(self.path, etag=staged.etag)
        except SluicegateError:
            return True


Place = Callable[[Sequence[Outcome]], None]


class Recorder(Protocol):
    """Where a driver records outcomes: partition versions, watermarks, archive runs ..."""

    def commit(self, outcomes: Sequence[Outcome], place: Place) -> Sequence[bool | SluicegateError]:
        """Record durable files in one transaction; False per outcome whose claim was lost, or
        the error of one the recorder refused (its file was not put in place: it fails).

        ``place(outcomes)`` puts the files of the outcomes that will be recorded in place
        (durably); call it before recording them, inside the transaction that fences them
        when the units are claims, so that a lost claim's file is never put in place.
        """
        ...

    def fail(self, unit: WorkUnit, error: SluicegateError) -> str | None:
        """Record a failed unit (retry with backoff, or park it); return its error as recorded, if
        not ``str(error)``."""
        ...

    def renew(self, tokens: Collection[str]) -> None:
        """Extend the leases of the units held under ``tokens``."""
        ...

    def release(self, tokens: Collection[str]) -> int:
        """Give back, without an attempt, what is still held under ``tokens``; return how many."""
        ...


@dataclass(frozen=True)
class UnitFailed:
    """What a read function yields, as ``(index, UnitFailed(error))``, to fail one unit of a batch.

    The unit's chunks so far are discarded and the failure is recorded; the other units of
    the batch go on (a callable that fails for one block, not a query that fails for all).
    """

    error: SluicegateError


Reader = Callable[[Sequence[WorkUnit]], Iterator[tuple[int, Any]]]


class Deadline(Exception):
    """The run's time budget is used up: stop reading, commit what is read, release the rest."""


def as_export_error(exc: BaseException) -> SluicegateError:
    """A sluicegate error as it is; anything else becomes a terminal error naming its type.

    Errors sluicegate does not know are terminal: retrying a programming error with backoff
    only hides it, while a parked unit shows it in ``status``.
    """
    if isinstance(exc, SluicegateError):
        return exc
    log.debug("unexpected error while exporting", exc_info=exc)
    return ExportError(f"{type(exc).__name__}: {exc}")
