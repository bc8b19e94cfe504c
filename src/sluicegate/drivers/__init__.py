"""Task kinds: one driver module per kind, found by name in :data:`KINDS`.

A kind's module (``sluicegate.drivers.<kind>``) provides, as module-level names:

``Task``
    its task spec, a frozen dataclass subclass of :class:`~sluicegate.specs.TaskBase`
    (with ``kind = "<kind>"``) holding only this kind's fields;
``load(*, name, folder, raw, settings) -> Task``
    read its ``task.toml`` (``raw``) and ``select.sql``; raise ConfigError naming the file
    and field; unknown keys are errors (``validate.reject_unknown``);
``Driver(context)``
    plans (``plan``: the dry run), claims, builds work units, hands them to a
    :class:`~sluicegate.pipeline.Pipeline` and records outcomes through its own ledger store
    (``run``);
``check(task, source) -> list[str]``
    what ``sluicegate check`` finds wrong against the live source;
``status(task, ledger) -> dict``
    the task's counts for ``status``, the service and ``/metrics``;
``describe(task) -> dict``
    what ``sluicegate tasks`` shows besides name, kind, format, path and select.

See docs/architecture.md, "Adding a task kind".
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from .. import db
from ..changes import ChangeFeed, FeedRun
from ..destinations import Destination, open_destination
from ..exceptions import DestinationUnavailable, SluicegateError, SourceUnavailable, UsageError, prefixed
from ..faults import Fault, fault_point
from ..formats import SPECS
from ..ledger import Ledger, open_ledger
from ..masking import mask_url
from ..options import Budget, RunOptions, TaskSummary
from ..sources import Column, Mode, ReadSpec, Source, open_source
from ..specs import Project, TaskBase

KINDS = ("partitioned", "incremental", "archive", "blocks", "aggregate", "ingest")
# Called after each batch a driver claims: the task's summary so far, and how many units the
# batch holds (the CLI's progress bar).
Progress = Callable[[TaskSummary, int], None]


def kind_module(kind: str) -> ModuleType:
    """The driver module of ``kind`` (one of :data:`KINDS`)."""
    if kind not in KINDS:
        raise KeyError(kind)
    return importlib.import_module(f"{__name__}.{kind}")


def require_source(project: Project, *, ledger: bool = False) -> None:
    """Refuse a missing SQLite source file when the project's tasks read the source and none
    writes it (ingest, blocks loads): then a typo'd path, opened, is a new, empty database, and
    every select blamed its own SQL for the missing table. ``ledger``: only when the ledger is
    in the source (opening it is what would make the file)."""
    if ledger and not project.settings.shared_database:
        return
    kinds = {t.kind for t in project.tasks.values()}
    if kinds - {"blocks", "ingest"} and not kinds & {"blocks", "ingest"}:
        db.require_source_file(project.settings.source_url)


@dataclass(kw_only=True)
class Context:
    """What a worker has open for a run: the ledger, the source, the destination.

    ``inbox`` is the ledger tables in the source database (the trigger inbox, the archive
    witness); it is ``ledger`` itself when both share a database.
    """

    project: Project
    ledger: Ledger
    inbox: Ledger
    source: Source
    destination: Destination
    fault: Fault
    feed_run: FeedRun = field(default_factory=FeedRun)  # the run's manifest names (a new one per pass)
    _columns: dict[str, list[Column]] = field(default_factory=dict)
    _others: dict[str, Destination] = field(default_factory=dict)  # re-exports' destinations, opened
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, project: Project) -> Context:
        """Connect to the ledger (creating its tables), the source and the destination."""
        s = project.settings
        require_source(project)  # before a ledger in the source makes its file
        ledger = open_ledger(s.ledger_url, s.ledger_schema)
        opened: list[Any] = [ledger]
        try:
            inbox = ledger if s.shared_database else Ledger(s.source_url, schema=s.ledger_schema)
            opened.append(inbox)
            source = open_source(s.source_url)
            opened.append(source)
            destination = open_destination(s.destination, stale_after=s.lease)
        except BaseException:
            for thing in reversed(opened):
                thing.close()
            raise
        return cls(
            project=project,
            ledger=ledger,
            inbox=inbox,
            source=source,
            destination=destination,
            fault=fault_point(s.fault, s.root),
        )

    def watch(self, stop: threading.Event | None) -> None:
        """Let the ledger connections' reconnect waits end at the run's stop (SIGINT, SIGTERM)."""
        self.ledger.core.stop = self.inbox.core.stop = stop

    def close(self) -> None:
        """Close every connection."""
        self.source.close()
        if self.inbox is not self.ledger:
            self.inbox.close()
        self.ledger.close()

    def columns(self, task: TaskBase, spec: ReadSpec) -> list[Column]:
        """The task's result columns, described once per context. A lost source or a timeout there
        names the task and its select.sql ("database ... is unavailable" alone named neither), and
        keeps its class: it stops the task, which the next run tries again."""
        with self._lock:
            if task.name not in self._columns:
                try:
                    self._columns[task.name] = self.source.describe(spec)
                except SourceUnavailable as exc:
                    where = f"task {task.name}: reading the column types of {spec.folder / 'select.sql'}"
                    raise prefixed(exc, f"{where} failed") from None
            return self._columns[task.name]

    def mode(self, fmt: str) -> Mode:
        """The read path for a format: the first of the format's modes this source offers."""
        from ..sources import arrow as arrow_source

        for mode in SPECS[fmt].modes:
            if mode in self.source.modes and (mode != "arrow" or arrow_source.available()):
                return mode
        return "rows"

    def feed(self, task: TaskBase, destination: Destination | None = None) -> ChangeFeed | None:
        """The change feed of ``task``'s files at ``destination`` (the project's), or None when off."""
        if not self.project.settings.destination.manifests:
            return None
        return ChangeFeed(destination or self.destination, task=task.name, run=self.feed_run)

    def destination_for(self, url: str | None) -> Destination:
        """The project's destination, or another one (a re-export's ``--destination``)."""
        if url is None:
            return self.destination
        if url in self._others:
            return self._others[url]
        settings = self.project.settings.destination
        try:
            self._others[url] = open_destination(dataclasses.replace(settings, url=url))
            return self._others[url]
        except SluicegateError:
            raise
        except (ValueError, ImportError) as exc:  # an unknown scheme, a URL that is no URL
            raise UsageError(
                f"destination {mask_url(url)}: {exc}; give a folder, file://, or s3:// URL"
            ) from None
        except OSError as exc:  # down, refused, unreachable: retried by redrive
            raise DestinationUnavailable(f"destination {mask_url(url)}: {exc}") from None


class Driver(Protocol):
    """Runs the tasks of one kind with a :class:`Context`."""

    def plan(self, task: Any, options: RunOptions, *, summary: TaskSummary, limit: int | None) -> None:
        """What ``run --dry-run`` lists, in ``summary.plan``: each unit that would be exported, why, where."""
        ...

    def run(
        self,
        task: Any,
        options: RunOptions,
        *,
        summary: TaskSummary,
        budget: Budget,
        limit: int | None,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """Export what is due; record outcomes on the ledger; return how many units were claimed."""
        ...
