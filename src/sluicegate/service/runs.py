"""Runs started over HTTP: recorded on the ledger first, executed on a worker thread."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from ..config import Project
from ..engine import Exporter, RunOptions, TaskSummary
from ..exceptions import SluicegateError
from ..ledger import Ledger, run_heartbeat

log = logging.getLogger("sluicegate.service")


class Metrics:
    """Process-local counters for /metrics (the ledger gauges are read at scrape time)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exports: dict[str, int] = {}
        self.rows: dict[str, int] = {}
        self.bytes: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self.seconds_sum: dict[str, float] = {}
        self.seconds_count: dict[str, int] = {}

    def record(self, summaries: Sequence[TaskSummary]) -> None:
        """Add one run's task summaries."""
        with self.lock:
            for s in summaries:
                for bucket, value in (
                    (self.exports, s.exported),
                    (self.rows, s.rows),
                    (self.bytes, s.bytes),
                    (self.failures, s.failed + len(s.task_errors)),
                ):
                    bucket[s.task] = bucket.get(s.task, 0) + value
                self.seconds_sum[s.task] = self.seconds_sum.get(s.task, 0.0) + s.seconds
                self.seconds_count[s.task] = self.seconds_count.get(s.task, 0) + 1


class RunManager:
    """Starts runs in the background and records them on the ledger."""

    def __init__(self, load: Any, metrics: Metrics, *, workers: int = 2) -> None:
        self.load = load  # () -> Project, reloaded per run so task edits take effect
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sluicegate-run")

    def start(self, names: Sequence[str], options: RunOptions, *, label: str) -> str:
        """Record a run (with the request's tag), then execute it on a worker thread; return its id."""
        project: Project = self.load()
        tasks = project.select(list(names))
        s = project.settings
        with Ledger(s.ledger_url, schema=s.ledger_schema) as ledger:
            ledger.ensure_schema()
            request = {"tasks": [t.name for t in tasks], **{k: v for k, v in asdict(options).items() if v}}
            tag = options.request.tag if options.request else None
            run_id = ledger.start_run(label, tag=tag, request=request)
        self.pool.submit(self._execute, project, tasks, dataclasses.replace(options, recorded=True), run_id)
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
        with Ledger(s.ledger_url, schema=s.ledger_schema) as ledger:
            ledger.finish_run(run_id, summaries)
        log.info("run %s finished in %.2fs", run_id, time.monotonic() - started)

    def close(self) -> None:
        """Wait for runs in hand."""
        self.pool.shutdown(wait=True)
