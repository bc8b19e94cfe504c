"""Runs (recorded by the service and by incremental runs) and schedule ticks."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from ..exceptions import SluicegateError
from .core import LedgerCore, Store

log = logging.getLogger("sluicegate.ledger")
HEARTBEAT_SECONDS = 30.0  # a run in progress records that it is alive this often ...
ABANDONED_AFTER = 120.0  # ... and one silent for this long is shown as abandoned


class RunStore(Store):
    """The ``runs`` table and the ``schedule_ticks`` that replicas claim."""

    SQL = "runs"

    def start(self, task: str, *, tag: str | None, request: dict[str, Any], run_id: str | None = None) -> str:
        """Record a run (``task`` may be ``*`` for all tasks) and return its id."""
        rid = uuid.UUID(run_id) if run_id else uuid.uuid4()
        self._run("start", id=rid, task=task, tag=tag, request=json.dumps(request, default=str))
        return str(rid)

    def finish(self, run_id: str, summary: Any) -> None:
        """Record a run's summary (JSON-ready data)."""
        self._run("finish", id=uuid.UUID(run_id), summary=json.dumps(summary, default=str))

    def heartbeat(self, run_id: str) -> None:
        """Record that an unfinished run is still alive."""
        self._run("heartbeat", id=uuid.UUID(run_id))

    def get(self, run_id: str) -> dict[str, Any] | None:
        """One run, or None (also for an id that is not a UUID)."""
        try:
            rid = uuid.UUID(run_id)
        except ValueError:
            return None
        row = self._run("get", id=rid).fetchone()
        return None if row is None else self._run_dict(row)

    def recent(self, *, limit: int = 50) -> list[dict[str, Any]]:
        """The most recent runs, newest first."""
        return [self._run_dict(r) for r in self._run("recent", limit=limit).fetchall()]

    def _run_dict(self, row: Sequence[Any]) -> dict[str, Any]:
        rid, task, tag, request, started, finished, summary, silent = row
        parsed = json.loads(summary) if summary else None
        if finished is None:
            # A run beats every HEARTBEAT_SECONDS; silence means its process died.
            state = "abandoned" if silent is not None and float(silent) > ABANDONED_AFTER else "running"
        else:
            tasks = parsed if isinstance(parsed, list) else []
            failed = any(t.get("failed") or t.get("task_errors") for t in tasks)
            state = "failed" if failed else "succeeded"
        return {
            "id": str(rid),
            "task": task,
            "tag": tag,
            "state": state,
            "request": json.loads(request) if request else None,
            "started_at": self.core.from_ts(started),
            "finished_at": self.core.from_ts(finished),
            "summary": parsed,
        }

    def record_task_error(self, task: str, error: str, *, config: bool) -> None:
        """Remember that ``task`` could not run (``config``: because of its configuration)."""
        self._run("record_task_error", task=task, error=error[:2000], config=config)

    def clear_task_error(self, task: str) -> None:
        """A run of ``task`` succeeded: forget its task-level error."""
        self._run("clear_task_error", task=task)

    def task_errors(self) -> dict[str, dict[str, Any]]:
        """Every recorded task-level error: ``{task: {"error", "config", "at"}}``."""
        return {
            str(task): {"error": error, "config": bool(config), "at": self.core.from_ts(at)}
            for task, error, config, at in self._run("task_errors").fetchall()
        }

    def claim_tick(self, task: str, tick: dt.datetime) -> bool:
        """True for exactly one caller per (task, schedule tick), across every replica."""
        return bool(self._run("claim_tick", task=task, tick=self.core.ts(tick)).rowcount == 1)


@contextlib.contextmanager
def run_heartbeat(url: str, schema: str, run_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Beat for ``run_id`` every ``every`` seconds (own thread and connection) until the block ends.

    A failed beat (the ledger out of reach) is tried again at the next, on a new connection: the
    thread used to end at the first, and a run that outlived a ledger restart showed as abandoned."""
    stop = threading.Event()

    def beat() -> None:
        core: LedgerCore | None = None
        failing = False
        try:
            while not stop.wait(every):
                try:
                    core = core or LedgerCore(url, schema=schema, stop=stop)
                    RunStore(core).heartbeat(run_id)
                except SluicegateError as exc:  # the run goes on; it shows as abandoned until a beat
                    if not failing:
                        log.warning(
                            "run %s: heartbeat failed, trying again every %g s: %s", run_id, every, exc
                        )
                    failing = True
                    if core is not None:
                        with contextlib.suppress(Exception):  # a broken connection's close
                            core.close()
                    core = None
                    continue
                if failing:
                    log.warning("run %s: heartbeat resumed", run_id)
                failing = False
        finally:
            if core is not None:
                core.close()

    thread = threading.Thread(target=beat, name="sluicegate-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
