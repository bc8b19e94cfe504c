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
from ..ledger.core import LedgerCore
from ..ledger.runs import HEARTBEAT_SECONDS, RunStore
from ..masking import scrub
from ..operations import ledger_of
from ..options import RunOptions
from ..specs import Project
from .metrics import Metrics

__all__ = ["Metrics", "RunManager"]

log = logging.getLogger("sluicegate.service")


class RunManager:
    """Starts runs in the background and records them on the ledger.

    A run beats from the moment it is recorded, so one waiting for a free worker thread is
    shown as running, not abandoned. The waiting runs beat together, on one thread and one
    ledger connection (a connection each exhausted the database's connections when runs piled
    up); a run that starts beats on its own. :meth:`close` (the service stopping) asks the runs
    in hand to stop after their batch, and records the runs that never started as finished with
    a reason, instead of running the whole queue (or leaving them to look abandoned).
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
        self._queued: dict[str, tuple[Future[None], Project]] = {}
        self._beater = threading.Thread(target=self._beat_queued, name="sluicegate-queue-beat", daemon=True)
        self._beater.start()

    def start(self, names: Sequence[str], options: RunOptions, *, label: str) -> str:
        """Record a run (with the request's tag), then execute it on a worker thread; return its id."""
        project = self.load()
        tasks = project.select(list(names))
        request = {"tasks": [t.name for t in tasks], **{k: v for k, v in asdict(options).items() if v}}
        tag = options.request.tag if options.request else None
        with ledger_of(project) as ledger:
            run_id = ledger.runs.start(label, tag=tag, request=request)
        with self._lock:
            try:
                options = dataclasses.replace(options, run_id=run_id)  # its manifests' name too
                future = self.pool.submit(self._execute, project, tasks, options, run_id)
            except RuntimeError:  # the service is stopping
                self._finish(project, run_id, [_not_started()])
                raise
            self._queued[run_id] = (future, project)
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
    ) -> None:
        with self._lock:
            self._queued.pop(run_id, None)
        started = time.monotonic()
        summaries: list[dict[str, Any]] = []
        s = project.settings
        try:
            with (
                run_heartbeat(s.ledger_url, s.ledger_schema, run_id, every=self.heartbeat),
                Exporter(project) as exporter,
            ):
                results = exporter.run_once(tasks, options, stop=self._stop)
            self.metrics.record(results)
            summaries = [r.as_dict() for r in results]
        except SluicegateError as exc:
            summaries = [{"task": "*", "failed": 0, "task_errors": [str(exc)]}]
        except Exception as exc:  # recorded on the run, never silently lost
            log.exception("run %s crashed", run_id)
            text = scrub(f"{type(exc).__name__}: {exc}", s.source_url, s.ledger_url)  # may echo a password
            summaries = [{"task": "*", "failed": 0, "task_errors": [text]}]
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

    def _beat_queued(self) -> None:
        """Every ``heartbeat`` seconds until :meth:`close`, beat for each run waiting for a worker,
        over one connection per ledger (reopened on the next beat when it fails)."""
        cores: dict[tuple[str, str], LedgerCore] = {}
        try:
            while not self._stop.wait(self.heartbeat):
                with self._lock:
                    waiting = [(r, p.settings) for r, (_, p) in self._queued.items()]
                if not waiting:  # no connection held while nothing waits
                    _close_all(cores)
                for run_id, s in waiting:
                    where = (s.ledger_url, s.ledger_schema)
                    try:
                        if where not in cores:
                            cores[where] = LedgerCore(s.ledger_url, schema=s.ledger_schema, stop=self._stop)
                        RunStore(cores[where]).heartbeat(run_id)
                    except Exception as exc:  # any: this one thread beats for every waiting run
                        log.warning(  # the run goes on; it may show as abandoned
                            "run %s: heartbeat failed: %s",
                            run_id,
                            exc,
                            exc_info=not isinstance(exc, SluicegateError),
                        )
                        if (lost := cores.pop(where, None)) is not None:
                            with contextlib.suppress(Exception):  # a broken connection's close
                                lost.close()
        finally:
            _close_all(cores)

    def close(self) -> None:
        """Stop: runs in hand stop after their batch (what they read is committed, the rest stays
        pending); runs still waiting are recorded as not started."""
        self._stop.set()
        with self._lock:
            queued = list(self._queued.items())
        for _, (future, _) in queued:
            future.cancel()
        self._beater.join()
        for run_id, (future, project) in queued:
            if future.cancelled():
                self._finish(project, run_id, [_not_started()])
                log.info(
                    "run %s not started: the service is stopping", run_id, extra={"event": "run_cancelled"}
                )
        self.pool.shutdown(wait=True)


def _close_all(cores: dict[tuple[str, str], LedgerCore]) -> None:
    for core in cores.values():
        core.close()
    cores.clear()


def _not_started() -> dict[str, Any]:
    return {
        "task": "*",
        "failed": 0,
        "task_errors": ["the service stopped before this run started; start it again"],
    }
