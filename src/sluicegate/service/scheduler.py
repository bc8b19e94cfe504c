"""Cron schedules in ``sluicegate serve``: one replica fires each tick, missed ticks are not replayed.

Every few seconds the scheduler looks at each task's most recent tick (``schedule`` in the
task's ``schedule_zone``, or an aggregate task's ``every``: see :mod:`sluicegate.schedules`).
A tick newer than the last one this process saw is claimed on the ledger (``schedule_ticks``,
one row per task and tick): only the replica whose insert wins starts the run. After downtime
only the latest tick fires, and that run exports all the work that is pending by then.

A blocks task's tick runs, as a request, the blocks that ended by the tick since the newest block on
the ledger (:func:`sluicegate.block_requests.scheduled_request`): a run without one only worked on
blocks already there, so a scheduled blocks task made none, silently. The run also takes what is
due on the ledger before the frontier (retries, blocks of a killed run). A tick none of whose blocks
has settled yet starts no run and is fired all the same; so is one whose request is refused, which is
logged and recorded on the ledger as the task's error (:func:`sluicegate.block_requests.refused`).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from .. import block_requests
from ..exceptions import SluicegateError, is_transient
from ..operations import ledger_of
from ..options import RunOptions
from ..schedules import due_tick, latest_tick
from ..specs import Project, TaskBase

__all__ = ["Scheduler", "latest_tick"]

log = logging.getLogger("sluicegate.scheduler")


class Scheduler:
    """A background thread that fires due schedule ticks through the run manager."""

    def __init__(self, load: Any, runs: Any, *, interval: float = 5.0) -> None:
        self.load = load
        self.runs = runs
        self.interval = interval
        self.seen: dict[str, dt.datetime] = {}
        self.won: dict[str, dt.datetime] = {}  # ticks this replica claimed, started or not
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start ticking in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="sluicegate-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        """Look every ``interval`` until stopped. A failed look is one line with its reason (the
        ledger out of reach printed a traceback every 5 s), and no error ends the thread: one that
        is not sluicegate's (the tasks folder replaced while read) stopped every schedule for good."""
        while not self._stop.is_set():
            try:
                self.tick(dt.datetime.now(dt.UTC))
            except SluicegateError as exc:
                log.warning("schedules not looked at: %s; trying again in %g s", exc, self.interval)
                log.debug("the scheduler's look failed", exc_info=True)  # -v: the traceback
            except Exception as exc:
                log.warning(
                    "schedules not looked at: %s: %s; trying again in %g s",
                    type(exc).__name__, exc, self.interval, exc_info=True,
                )  # fmt: skip
            self._stop.wait(self.interval)

    def tick(self, now: dt.datetime) -> list[str]:
        """Fire every task whose latest tick is new and won on the ledger; return the run ids."""
        project: Project = self.load()
        due = [t for t in project.tasks.values() if due_tick(t, now) is not None]
        if not due:
            return []
        started = []
        with ledger_of(project) as ledger:
            for task in due:
                tick = due_tick(task, now)
                if tick is None or self.seen.get(task.name) == tick:
                    continue
                try:
                    started += self._fire(ledger, project, task, tick)
                except SluicegateError as exc:  # the other tasks' ticks go on
                    log.warning("scheduled run of %s not started: %s; trying again", task.name, exc)
                    log.debug("the scheduled run of %s did not start", task.name, exc_info=True)
        return started

    def _fire(self, ledger: Any, project: Project, task: TaskBase, tick: dt.datetime) -> list[str]:
        """Claim and start ``task``'s tick. Seen once started (or another replica's, or a blocks task's
        with no settled block): a claim or start that failed (the ledger out of reach) is tried again
        on the next look, not skipped."""
        name = task.name
        if self.won.get(name) != tick and not ledger.runs.claim_tick(name, tick):
            self.seen[name] = tick
            return []
        self.won[name] = tick
        options = RunOptions()
        if task.kind == "blocks":
            try:
                options = RunOptions(blocks=block_requests.scheduled_request(project, task, tick, ledger))
            except SluicegateError as exc:
                if is_transient(exc):  # the source out of reach: the next look asks again
                    raise
                # a keys_sql the source refuses: no look fixes it; the next tick asks again. Status
                # shows it as the task's error until a run succeeds.
                log.error("scheduled run of %s at %s not started: %s", name, tick.isoformat(), exc)
                block_requests.refused(ledger, task, exc)
                self.seen[name] = tick
                return []
            if options.blocks is None:  # nothing settled yet: a later tick runs those blocks
                self.seen[name] = tick
                return []
        run_id = self.runs.start([name], options, label=f"schedule:{name}")
        self.seen[name] = tick
        return [run_id]
