"""Runs started over HTTP: recorded on the ledger first, executed on a worker thread."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from ..engine import Exporter
from ..exceptions import SluicegateError
from ..ledger import run_heartbeat
from ..ledger.runs import HEARTBEAT_SECONDS
from ..operations import ledger_of
from ..options import RunOptions
from ..specs import Project
from .metrics import Metrics

__all__ = ["Metrics", "RunManager"]

log = logging.getLogger("sluicegate.service")


class RunManager:
    """Starts runs in the background and records them on the ledger.

    A run beats from the moment it is recorded, so one waiting for a free worker thread is
    shown as running, not abandoned. :meth:`close` (the service stopping) asks the runs in hand
    to stop after their batch, and records the runs that never started as finished with a
    reason, instead of running the whole queue (or leaving them to look abandoned).
    """

    def __init__(
        self,
        load: Callable[[], Project],
        metrics: Metrics,
        *,
        workers: int = 2,
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.load = load  # reloaded per run so task edits take effect
        self.metrics = metrics
        self.heartbeat = heartbeat
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sluicegate-run")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._queued: dict[str, tuple[Future[None], contextlib.ExitStack, Project]] = {}

    def start(self, names: Sequence[str], options: RunOptions, *, label: str) -> str:
        """Record a run (with the request's tag), then execute it on a worker thread; return its id."""
        project = self.load()
        tasks = project.select(list(names))
        request = {"tasks": [t.name for t in tasks], **{k: v for k, v in asdict(options).items() if v}}
        tag = options.request.tag if options.request else None
        with ledger_of(project) as ledger:
            run_id = ledger.runs.start(label, tag=tag, request=request)
        s = project.settings
        beat = contextlib.ExitStack()  # closed by the run when it ends, or by close() if it never starts
        beat.enter_context(run_heartbeat(s.ledger_url, s.ledger_schema, run_id, every=self.heartbeat))
        with self._lock:
            try:
                options = dataclasses.replace(options, recorded=True)
                future = self.pool.submit(self._execute, project, tasks, options, run_id, beat)
            except RuntimeError:  # the service is stopping
                beat.close()
                self._finish(project, run_id, [_not_started()])
                raise
            self._queued[run_id] = (future, beat, project)
        log.info(
            "run %s started: %s (%s)",
            run_id,
            label,
            ", ".join(request["tasks"]) or "no task",
            extra={"event": "run_started", "run_id": run_id, "label": label, "tasks": request["tasks"]},
        )
        return run_id

    def _execute(
        self,
        project: Project,
        tasks: Sequence[Any],
        options: RunOptions,
        run_id: str,
        beat: contextlib.ExitStack,
    ) -> None:
        with self._lock:
            self._queued.pop(run_id, None)
        started = time.monotonic()
        summaries: list[dict[str, Any]] = []
        try:
            with beat, Exporter(project) as exporter:
                results = exporter.run_once(tasks, options, stop=self._stop)
            self.metrics.record(results)
            summaries = [r.as_dict() for r in results]
        except SluicegateError as exc:
            summaries = [{"task": "*", "failed": 0, "task_errors": [str(exc)]}]
        except Exception as exc:  # recorded on the run, never silently lost
            log.exception("run %s crashed", run_id)
            summaries = [{"task": "*", "failed": 0, "task_errors": [f"{type(exc).__name__}: {exc}"]}]
        self._finish(project, run_id, summaries)
        seconds = time.monotonic() - started
        exported = sum(int(s.get("exported") or 0) for s in summaries)
        failed = sum(int(s.get("failed") or 0) + len(s.get("task_errors") or []) for s in summaries)
        log.log(
            logging.WARNING if failed else logging.INFO,
            "run %s finished in %.2fs: %d exported, %d failed",
            run_id,
            seconds,
            exported,
            failed,
            extra={
                "event": "run_finished",
                "run_id": run_id,
                "seconds": round(seconds, 3),
                "exported": exported,
                "failed": failed,
            },
        )

    def _finish(self, project: Project, run_id: str, summaries: list[dict[str, Any]]) -> None:
        try:
            with ledger_of(project) as ledger:
                ledger.runs.finish(run_id, summaries)
        except SluicegateError as exc:  # the run will show as abandoned once its heartbeat stops
            log.warning("run %s: could not record its end: %s", run_id, exc)

    def close(self) -> None:
        """Stop: runs in hand stop after their batch (what they read is committed, the rest stays
        pending); runs still waiting are recorded as not started."""
        self._stop.set()
        with self._lock:
            queued = list(self._queued.items())
        for _, (future, _, _) in queued:
            future.cancel()
        for run_id, (future, beat, project) in queued:
            if future.cancelled():
                beat.close()
                self._finish(project, run_id, [_not_started()])
                log.info(
                    "run %s not started: the service is stopping", run_id, extra={"event": "run_cancelled"}
                )
        self.pool.shutdown(wait=True)


def _not_started() -> dict[str, Any]:
    return {
        "task": "*",
        "failed": 0,
        "task_errors": ["the service stopped before this run started; start it again"],
    }
