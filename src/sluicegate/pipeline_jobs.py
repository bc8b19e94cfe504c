"""The units of a batch while the pipeline reads, publishes and commits them (see
:mod:`sluicegate.pipeline`): a :class:`Job` per unit, handed to a publisher thread in a
:class:`Group`, whose outcome is awaited by :func:`group_outcome`."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

from .destinations import Staged
from .exceptions import SluicegateError
from .formats import Writer
from .work import Outcome, WorkUnit


@dataclass(kw_only=True)
class Job:
    """One unit inside a batch, while it is read, published and committed."""

    unit: WorkUnit
    staged: Staged | None = None
    writer: Writer | None = None
    error: SluicegateError | None = None
    done: bool = False
    held: int = 0  # bytes in memory while in flight


class Group:
    """Sealed units handed to one publisher thread together (see ``Pipeline`` in sluicegate.pipeline)."""

    __slots__ = ("future", "held", "jobs")

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.held = 0
        self.future: Future[list[Outcome | Future[Outcome] | BaseException]] | None = None


Slot = tuple[Group, int]  # a unit's group and its place in it


def group_outcome(slot: Slot) -> Outcome:
    """A publisher thread's outcome, once the upload it handed on (if any) is done."""
    group, index = slot
    assert group.future is not None, "waited for a unit not handed over"
    result = group.future.result()[index]
    if isinstance(result, BaseException):
        raise result
    return result.result() if isinstance(result, Future) else result
