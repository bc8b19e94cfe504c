"""Runs started over HTTP: recorded on the ledger first, executed on a worker thread."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from ..engine import Exporter
from ..exceptions import SluicegateError
from ..ledger import run_heartbeat
from ..operations import ledger_of
from ..options import RunOptions
from ..specs import Project
from .metrics import Metrics

__all__ = ["Metrics", "RunManager"]

log = logging.getLogger("sluicegate.service")


class RunManager:
    """Starts runs in the background and records them on the ledger."""

    def __init__(self, load: Callable[[], Project], metrics: Metrics, *, workers: int = 2) -> None:
        self.load = load  # reloaded per run so task edits take effect
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sluicegate-run")

    def start(self, names: Sequence[str], options: RunOptions, *, label: str) -> str:
        """Record a run (with the request's tag), then execute it on a worker thread; return its id."""
        project = self.load()
        tasks = project.select(list(names))
        request = {"tasks": [t.name for t in tasks], **{k: v for k, v in asdict(options).items() if v}}
        tag = options.request.tag if options.request else None
        with ledger_of(project) as ledger:
            run_id = ledger.runs.start(label, tag=tag, request=request)
        self.pool.submit(self._execute, project, tasks, dataclasses.replace(options, recorded=True), run_id)
        log.info(
            "run %s started: %s (%s)",
            run_id,
            label,
            ", ".join(request["tasks"]) or "no task",
            extra={"event": "run_started", "run_id": run_id, "label": label, "tasks": request["tasks"]},
        )
        return run_id

    def _execute(self, project: Project, tasks: Sequence[Any], options: RunOptions, run_id: str) -> None:
        started = time.monotonic()
        summaries: list[dict[str, Any]] = []
        s = project.settings
        try:
            with run_heartbeat(s.ledger_url, s.ledger_schema, run_id), Exporter(project) as exporter:
                results = exporter.run_once(tasks, options)
            self.metrics.record(results)
            summaries = [r.as_dict() for r in results]
        except SluicegateError as exc:
            summaries = [{"task": "*", "failed": 0, "task_errors": [str(exc)]}]
        except Exception as exc:  # recorded on the run, never silently lost
            log.exception("run %s crashed", run_id)
            summaries = [{"task": "*", "failed": 0, "task_errors": [f"{type(exc).__name__}: {exc}"]}]
        try:
            with ledger_of(project) as ledger:
                ledger.runs.finish(run_id, summaries)
        except SluicegateError as exc:  # the run will show as abandoned once its heartbeat stops
            log.warning("run %s: could not record its end: %s", run_id, exc)
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

    def close(self) -> None:
        """Wait for runs in hand."""
        self.pool.shutdown(wait=True)
