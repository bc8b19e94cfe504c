"""Running tasks: one pass over the selected tasks, each by its kind's driver.

:meth:`Exporter.run_once` is the whole loop for one pass; ``run --every`` and the service
wrap it. Each task is run by ``sluicegate.drivers.<kind>.Driver`` with the exporter's
:class:`~sluicegate.drivers.Context` (its ledger, source and destination); a task-level
error (a bad query, the ledger down) stops that task only and is reported in its summary.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from .changes import MANIFESTS, FeedRun, is_manifest
from .db import POSTGRESQL
from .destination_id import check_destination
from .drivers import Context, Progress, kind_module
from .exceptions import ConfigError, PermissionDenied, SluicegateError, UsageError
from .masking import mask_url
from .options import Budget, RunOptions, TaskSummary
from .specs import Project, TaskBase
from .work import Deadline, as_export_error

__all__ = ["Budget", "Exporter", "Progress", "RunOptions", "TaskSummary", "run"]

log = logging.getLogger("sluicegate")


class Exporter:
    """Runs a project's tasks against its ledger, source and destination."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.context = Context.open(project)

    def close(self) -> None:
        """Close every connection."""
        self.context.close()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_once(
        self,
        tasks: Sequence[TaskBase],
        options: RunOptions,
        *,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> list[TaskSummary]:
        """Export every pending, complete unit of ``tasks`` once; return a summary per task."""
        budget = Budget.start(options.max_runtime, options.started, stop)
        self.context.watch(stop)
        check_ledger_found(self.context, options)
        check_destination(self.context, tasks, options)
        # Each pass names its manifests with a new run id; the service's with the id it answered
        # (POST /exports), so 'sluicegate changes --since RUN_ID' finds that run's manifests.
        self.context.feed_run = FeedRun(run=uuid.UUID(options.run_id).hex) if options.run_id else FeedRun()
        if not options.dry_run:
            try:
                self.context.destination.cleanup(older_than=self.project.settings.lease)
            except SluicegateError as exc:  # a failed clean-up must not stop the exports
                log.warning("destination clean-up failed: %s", exc)
        summaries = []
        remaining = options.limit if options.limit is not None else self.project.settings.limit
        for task in tasks:
            summary = TaskSummary(task=task.name)
            started = time.monotonic()
            if not budget.can_start(0.0):  # the time budget was used up by earlier tasks
                log.info("task %s not started: the run's max_runtime is used up", task.name)
            elif budget.stopped():  # SIGINT or SIGTERM during an earlier task
                log.info("task %s not started: the run was told to stop", task.name)
            else:
                done = self._run_task(task, options, summary, budget, remaining, progress, stop)
                if remaining is not None and task.kind == "partitioned":
                    remaining = max(remaining - done, 0)
            summary.seconds = round(time.monotonic() - started, 3)
            summaries.append(summary)
        return summaries

    def _run_task(
        self,
        task: TaskBase,
        options: RunOptions,
        summary: TaskSummary,
        budget: Budget,
        remaining: int | None,
        progress: Progress | None,
        stop: threading.Event | None,
    ) -> int:
        driver: Any = kind_module(task.kind).Driver(self.context)
        try:
            if options.dry_run:
                driver.plan(task, options, summary=summary, limit=remaining)
                return 0
            done: int = driver.run(
                task, options, summary=summary, budget=budget, limit=remaining, progress=progress, stop=stop
            )
        except SluicegateError as exc:
            # A task-level problem (bad query, no zone, ledger down) stops this task only; it is
            # recorded on the ledger, so status shows it until a run of the task succeeds.
            summary.task_errors.append(str(exc))
            summary.config_error = summary.config_error or isinstance(exc, ConfigError | UsageError)  # exit 2
            log.debug("task %s failed", task.name, exc_info=True)
            self._remember(task, str(exc), config=isinstance(exc, ConfigError))
            return 0
        except Deadline:
            raise
        except Exception as exc:  # a bug in one task's driver stops that task, as a partition's does
            error = f"{as_export_error(exc)} (a bug in sluicegate: -v shows its traceback; please report it)"
            summary.task_errors.append(error)
            self._remember(task, error)
            return 0
        # A driver whose failed unit has no ledger row of its own (an archive task's one run)
        # leaves the failure as the task's error: status shows it until a run succeeds.
        unrecorded = getattr(driver, "failures_unrecorded", False) and summary.errors
        self._remember(task, summary.errors[0] if unrecorded else None)
        return done

    def _remember(self, task: TaskBase, error: str | None, *, config: bool = False) -> None:
        """Record a task-level error on the ledger, or clear it after a run that had none."""
        runs = self.context.ledger.runs
        try:
            if error is None:
                runs.clear_task_error(task.name)
            else:
                runs.record_task_error(task.name, error, config=config)
        except SluicegateError as exc:  # the ledger is down: the run's summary still says it
            log.warning("task %s: could not record its state on the ledger: %s", task.name, exc)


FEED_PAGE = 1000  # the files under _manifests/ the lost-ledger check lists: one S3 request


def check_ledger_found(ctx: Context, options: RunOptions) -> None:
    """ConfigError when the ledger records nothing but the destination holds a change feed: the
    ledger was lost (a deleted file) or its URL or schema is mistyped, and a run would export
    everything again as new (see ledger/found.py). One query, and while the ledger records
    nothing, one listing of at most FEED_PAGE files under ``_manifests/`` (sluicegate's manifests
    count, not another tool's files). ``options.new_ledger`` records that the ledger was started
    there on purpose instead (but for a dry run)."""
    s = ctx.project.settings
    try:
        if not s.destination.manifests or ctx.ledger.found.has_records():
            return
        if options.new_ledger:
            if not options.dry_run:  # later runs take this ledger, though it may still record nothing
                ctx.ledger.found.mark_new_ledger()
            return
        listed = ctx.destination.list_files(f"{MANIFESTS}/", most=FEED_PAGE)
    except PermissionDenied:  # a role without the owner's grants cannot have made a new ledger
        return
    except SluicegateError as exc:  # the ledger or destination is down: the tasks report it
        log.warning("could not check that the ledger is the one of the destination: %s", exc)
        return
    if any(is_manifest(name) for name in listed):  # not another tool's files there
        schema = f" (schema {s.ledger_schema})" if ctx.ledger.dialect is POSTGRESQL else ""
        raise ConfigError(
            f"the ledger at {mask_url(s.ledger_url)}{schema} records no export, but the destination "
            f"{mask_url(s.destination.url)} already holds sluicegate's change feed ({MANIFESTS}/), so "
            "the ledger looks lost or mistyped and a run would export everything again: fix [ledger] "
            f"url or schema in {s.root / 'sluicegate.toml'}, restore the ledger from its backup, or "
            "run with --new-ledger to start a new ledger over this output on purpose"
        )


def run(
    project: Project, task_names: Sequence[str] = (), options: RunOptions | None = None, **kwargs: Any
) -> list[TaskSummary]:
    """Run ``task_names`` (all tasks when empty) once and return their summaries."""
    tasks = project.select(list(task_names))
    if not tasks:
        raise ConfigError(f"no tasks to run in {project.settings.root / 'tasks'}; add a task folder")
    with Exporter(project) as exporter:
        return exporter.run_once(tasks, options or RunOptions(), **kwargs)
