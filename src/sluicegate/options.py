"""What a run is asked to do and what it did: :class:`RunOptions`, :class:`TaskSummary`, :class:`Budget`."""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .exceptions import printable

if TYPE_CHECKING:
    from .export_request import ExportRequest
    from .timeblocks import BlockRequest

MAX_ERRORS = 20  # unit errors listed in a task's summary
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def prefer_system_allocator() -> None:
    """Let Arrow allocate with the C library's malloc in processes sluicegate runs, unless the
    environment already names a pool (``ARROW_DEFAULT_MEMORY_POOL``).

    Arrow's default, mimalloc, keeps the pages of every thread's heap: with the reading thread
    and four publisher threads per exporter, that held 20-35 MiB more at peak for the same
    speed (bench/README.md, "Peak RSS and Arrow's allocator"). Called by the command line and
    the Lambda entry point before anything imports pyarrow; a program that embeds sluicegate
    keeps its own choice.
    """
    os.environ.setdefault(ARROW_POOL_ENV, "system")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What one ``sluicegate run`` does."""

    limit: int | None = None
    batch_size: int | None = None
    workers: int | None = None  # partitioned tasks: parallel exporters (default: settings.workers)
    max_runtime: float | None = None
    started: float | None = None  # time.monotonic() when the max_runtime budget began (default: now)
    dry_run: bool = False
    request: ExportRequest | None = None  # incremental tasks: type, window, entities, destination, tag
    redrive: bool = False  # incremental tasks: re-run only the recorded failures
    run_id: str | None = None  # the caller (the HTTP service) recorded this run on the ledger under it
    blocks: BlockRequest | None = None  # blocks tasks: the range, key value and stages to run
    new_ledger: bool = False  # run on a ledger that records nothing over a change feed (engine)
    move_destination: bool = False  # tasks export to this destination, not the one recorded (destination_id)

    @property
    def recorded(self) -> bool:
        """Whether the caller recorded this run on the ledger (its manifests are named by its id)."""
        return self.run_id is not None


@dataclass(kw_only=True)
class TaskSummary:
    """What happened to one task in a run."""

    task: str
    exported: int = 0
    unchanged: int = 0
    failed: int = 0  # distinct partitions whose last attempt in this run failed
    released: int = 0
    lost: int = 0
    rows: int = 0
    bytes: int = 0
    marked: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)  # "partition: error", the first MAX_ERRORS
    task_errors: list[str] = field(default_factory=list)  # errors that stopped the task itself
    config_error: bool = False  # one of them is the task's configuration (exit code 2)
    plan: list[dict[str, Any]] = field(default_factory=list)
    plan_cut: bool = False  # a dry run listed its limit of units: there may be more
    entities: list[dict[str, Any]] = field(default_factory=list)
    archive: list[dict[str, Any]] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)  # blocks tasks: each (block, stage) run
    aggregate: list[dict[str, Any]] = field(default_factory=list)  # aggregate tasks: the evaluation
    ingest: dict[str, Any] | None = None  # ingest tasks: messages received, inserted, duplicates, ...
    run_id: str | None = None
    _failures: dict[str, str] = field(default_factory=dict, repr=False)

    def note_failure(self, unit: str, message: str) -> None:
        """Record that ``unit`` failed (a retry in the same run is not counted again).

        Its error line is ``"unit: message"``, or the message alone for the unnamed unit ``""``; a
        unit holding a newline or another control character (an entity) is quoted, as printable does.
        """
        self._failures[unit] = f"{printable(unit)}: {message}" if unit else message
        self._sync_failures()

    def note_success(self, partition: str) -> None:
        """A partition that failed earlier in this run was exported after all."""
        if self._failures.pop(partition, None) is not None:
            self._sync_failures()

    def _sync_failures(self) -> None:
        self.failed = len(self._failures)
        self.errors = list(self._failures.values())[:MAX_ERRORS]

    def merge(self, part: TaskSummary) -> None:
        """Add another worker's counts and messages for the same task."""
        for name in ("exported", "unchanged", "released", "lost", "rows", "bytes"):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        self._failures.update(part._failures)
        self._sync_failures()
        self.task_errors.extend(part.task_errors)
        self.config_error = self.config_error or part.config_error

    @property
    def ok(self) -> bool:
        """Nothing failed: no partition and no task-level error."""
        return not self.failed and not self.task_errors

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = dataclasses.asdict(self)
        del out["_failures"]
        return out


EXIT_RESERVE = 0.3  # seconds kept for releasing claims, closing connections and exiting


@dataclass(kw_only=True)
class Budget:
    """The time a run may take (``--max-runtime``), with what it must keep to finish inside it.

    A run stops claiming when the next batch (estimated from the last one), the final flush
    (the longest seen) and EXIT_RESERVE would not fit before the deadline, and stops reading
    when only the flush and the reserve still fit: what is read by then is published and
    committed, the rest is released. So a run ends inside its budget unless one flush takes
    longer than the longest flush before it.
    """

    deadline: float | None
    flush: float = 0.1  # the longest flush (wait for publishers, sync, commit) seen so far
    stop: threading.Event | None = None  # set by SIGINT or SIGTERM: start no new batch

    @classmethod
    def start(
        cls, max_runtime: float | None, started: float | None = None, stop: threading.Event | None = None
    ) -> Budget:
        """A budget of ``max_runtime`` seconds counted from ``started`` (default: now)."""
        if max_runtime is None:
            return cls(deadline=None, stop=stop)
        return cls(deadline=(started if started is not None else time.monotonic()) + max_runtime, stop=stop)

    def stopped(self) -> bool:
        """Whether the run was told to stop (finish the batch in hand, start no other)."""
        return self.stop is not None and self.stop.is_set()

    def _room(self) -> float:
        assert self.deadline is not None
        return self.deadline - time.monotonic() - EXIT_RESERVE - self.flush

    def can_start(self, batch: float) -> bool:
        """Whether a batch that takes ``batch`` seconds (the last one's time) still fits."""
        return self.deadline is None or self._room() > batch * 1.2

    def left(self) -> float:
        """Seconds reading may go on before the flush and the exit must begin (inf: no deadline)."""
        return math.inf if self.deadline is None else max(self._room(), 0.0)

    def over(self) -> bool:
        """Whether reading must stop now so that the flush and the exit still fit."""
        return self.deadline is not None and self._room() <= 0

    def note_flush(self, seconds: float) -> None:
        """Remember how long a flush took."""
        self.flush = max(self.flush, seconds)
