"""How a partitioned task's exports are recorded: fenced commits of partition versions,
failures backed off or parked, leases renewed and released (the pipeline's recorder)."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from ..destinations import Destination
from ..exceptions import SluicegateError, is_transient
from ..ledger import ExportResult, Ledger
from ..specs import Settings
from ..work import Outcome, Place, WorkUnit
from .partitioned_paths import SharedFiles

if TYPE_CHECKING:
    from .partitioned import Task


class Recorder:
    """Fenced commits of partition versions; failures retried with backoff or parked."""

    def __init__(self, ledger: Ledger, settings: Settings, destination: Destination, task: Task) -> None:
        self.store, self.task = ledger.partitions, task
        self.settings = settings
        self.destination = destination

    def commit(self, outcomes: Sequence[Outcome], place: Place) -> list[bool | SluicegateError]:
        """Put in place, then record, the files of the partitions still claimed (SharedFiles vets them)."""
        by_id = {o.unit.handle.id: o for o in outcomes}

        def place_held(held: Sequence[ExportResult]) -> list[ExportResult]:
            # without a deletion SharedFiles dropped (another partition recorded that file)
            placed = [
                o if (o := by_id[r.claim.id]).remove == r.remove else dataclasses.replace(o, remove=None)
                for r in held
            ]
            place(placed)
            return [  # dataclasses.replace costs ~5 µs a file; a local file has no ETag
                r if r.etag == o.etag else dataclasses.replace(r, etag=o.etag)
                for r, o in zip(held, placed, strict=True)
            ]

        vet = SharedFiles(self.task, self.destination)
        done = self.store.commit([_result(o) for o in outcomes], place_held, vet)
        # A lost claim's upload that landed anyway: the next export deletes (and lists) it.
        lost = zip(outcomes, done, strict=True)
        self.store.requeue([o.unit.handle for o, ok in lost if not ok and o.left_behind(self.destination)])
        return vet.verdicts([o.unit.handle.id for o in outcomes], done)

    def fail(self, unit: WorkUnit, error: SluicegateError) -> str:
        """Back off (transient) or park (terminal, or out of attempts); return the error recorded:
        a parked one does not say "will retry"."""
        terminal = not is_transient(error)
        parked = terminal or unit.handle.attempts + 1 >= self.settings.max_attempts  # as the ledger decides
        said = str(error) or type(error).__name__
        text = said.removesuffix("; will retry") if parked else said
        recorded = self.store.fail(
            unit.handle,
            error=text,
            terminal=terminal,
            max_attempts=self.settings.max_attempts,
            backoff=self.settings.backoff,
            counted=not isinstance(error, LeaseExpired),
        )
        return text if recorded else said  # taken over meanwhile: not parked by us

    def renew(self, tokens: Collection[str]) -> None:
        """Extend the claims' leases."""
        for token in tokens:
            self.store.renew(token, lease=self.settings.lease)

    def release(self, tokens: Collection[str]) -> int:
        """Give back what is still claimed, without an attempt."""
        return sum(self.store.release(token) for token in tokens)


def _result(outcome: Outcome) -> ExportResult:
    """What the ledger records of an outcome (the ETag is added once the file is in place)."""
    return ExportResult(
        claim=outcome.unit.handle, path=outcome.path, rows=outcome.rows, nbytes=outcome.nbytes,
        checksum=outcome.checksum, published=outcome.published, remove=outcome.remove,
    )  # fmt: skip


class LeaseExpired(SluicegateError):
    """A partition claimed with no attempt left: leases expired, or ``max_attempts`` was lowered."""

    def __init__(self, attempts: int, task: str, max_attempts: int) -> None:
        super().__init__(
            f"gave up after {attempts} attempts, max_attempts being {max_attempts} (failed exports count, and"
            f" leases expired as a worker died or timed out); run 'sluicegate reset {task} --failed' to retry"
        )
