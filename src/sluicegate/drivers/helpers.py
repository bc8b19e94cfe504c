"""The helper exporters of ``run --workers N``: worker processes beside the one that runs.

A helper is a Python process that runs :func:`main`. It reads its orders (the project, the
task, its share of the run's limit, the run's deadline and its lane of the manifest numbers)
pickled on stdin, opens its own connections and runs the claim-export-commit loop that any
worker on the ledger runs. It reports each batch, then its summary or the error that stopped
it, pickled on stdout; its stderr is the run's. Its stdin stays open: when that closes (the run
was told to stop, or the process that started the helper died, even by SIGKILL), the helper
finishes the batch in hand and stops. SIGINT and SIGTERM do the same.

Processes, not threads: reading, encoding and the ledger's bookkeeping hold the GIL most of
the time, so exporter threads of one process shared one core (bench/README.md, "Exporters as
processes").
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .. import db, exceptions
from ..changes import FeedRun
from ..exceptions import SluicegateError, SourceLost
from ..masking import ScrubFilter
from ..options import Budget, RunOptions, TaskSummary
from ..sources import Source
from ..work import Deadline

Progress = Callable[[TaskSummary, int], None]
log = logging.getLogger(__name__)
POLL = 0.2  # seconds between looks at the run's stop event while waiting for helpers


@dataclass(frozen=True, kw_only=True)
class Orders:
    """What one helper is asked to do."""

    project: Any  # specs.Project
    task: Any  # drivers.partitioned.Task
    options: RunOptions
    limit: int | None  # its share of the run's limit
    deadline: float | None  # the run's Budget (time.monotonic() is the same clock in every process)
    flush: float
    feed: tuple[str, int]  # its lane of the run's manifest names: run id, first number
    log_level: int


class Helper:
    """One helper process, as the process that started it sees it."""

    def __init__(self, orders: Orders, progress: Progress | None) -> None:
        self.summary = TaskSummary(task=orders.task.name)
        self.claimed = 0
        self.error: SluicegateError | None = None
        self._reported = False
        self._progress = progress
        package_root = str(Path(__file__).resolve().parents[2])  # the same sluicegate, wherever it is
        path = os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))
        env = {**os.environ, "PYTHONPATH": path}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"from {__name__} import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with contextlib.suppress(OSError):  # it died at once: wait() says how
            self.proc.stdin.write(pickle.dumps(orders))
            self.proc.stdin.flush()
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stdout,), name="sluicegate-helper", daemon=True
        )
        self._reader.start()

    def _read(self, channel: BinaryIO) -> None:
        while True:
            try:
                message = pickle.load(channel)
            except Exception:  # end of the stream, or the helper died in the middle of a message
                return
            if message[0] == "batch":  # its counts so far: what counts if it dies later
                _, claimed, self.summary = message
                self.claimed += claimed
                if self._progress is not None:
                    self._progress(self.summary, claimed)
            elif message[0] == "error":
                self.error = rebuild(message[1], message[2])
            elif message[0] == "summary":
                _, self.claimed, self.summary = message
                self._reported = True

    def stop(self) -> None:
        """Ask the helper to finish the batch in hand and stop."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def result(self) -> SluicegateError | None:
        """After the helper exited: the error that stopped it, if any."""
        self._reader.join()
        if self.error is None and (self.proc.returncode != 0 or not self._reported):
            code = self.proc.returncode
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            self.error = SluicegateError(
                f"a helper exporter (process {self.proc.pid}) {how}; partitions it had claimed "
                "are exported again once their lease expires"
            )
        return self.error


class Helpers:
    """The helper processes of one task's run."""

    def __init__(self, progress: Progress | None, stop: threading.Event | None) -> None:
        self.progress = progress
        self.stop = stop
        self.started: list[Helper] = []

    def start(self, orders: list[Orders]) -> None:
        """Start a helper for each of ``orders``."""
        for one in orders:
            self.started.append(Helper(one, self.progress))

    def finish(self, summary: TaskSummary, *, stopping: bool = False) -> tuple[int, list[SluicegateError]]:
        """Wait for every helper (telling them to stop when the run must), add their counts to
        ``summary``, and return the partitions they claimed and the errors that stopped them.
        An interruption while waiting kills them: their claims expire with their leases."""
        try:
            for helper in self.started:
                while helper.proc.poll() is None:
                    if stopping or (self.stop is not None and self.stop.is_set()):
                        for each in self.started:
                            each.stop()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        helper.proc.wait(POLL)
        except BaseException:
            for helper in self.started:
                helper.proc.kill()
                helper.proc.wait()
            raise
        errors = [e for e in (h.result() for h in self.started) if e is not None]
        for helper in self.started:
            summary.merge(helper.summary)
        return sum(h.claimed for h in self.started), errors


def rebuild(kind: str, message: str) -> SluicegateError:
    """A helper's error as this process raises it: the same class when it is one of ours."""
    cls = getattr(exceptions, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, SluicegateError)):
        cls = SluicegateError
    return cls(message)


def orders_for(
    ctx: Any, task: Any, options: RunOptions, budget: Budget, limits: list[int | None]
) -> list[Orders]:
    """Orders for a helper per limit, each with its own lane of ``ctx``'s manifest numbers."""
    lanes = ctx.feed_run.split(len(limits) + 1)
    return [
        Orders(
            project=ctx.project,
            task=task,
            options=options,
            limit=limit,
            deadline=budget.deadline,
            flush=budget.flush,
            feed=(lane.run, lane.start),
            log_level=logging.getLogger().getEffectiveLevel(),
        )
        for limit, lane in zip(limits, lanes, strict=True)
    ]


def main() -> None:
    """A helper's life: read the orders, export until done or told to stop, report."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever else prints goes to stderr, not into the channel
    orders: Orders = pickle.load(sys.stdin.buffer)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=_until_closed, args=(stop,), daemon=True).start()
    settings = orders.project.settings
    logging.basicConfig(level=orders.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(ScrubFilter(settings.source_url, settings.ledger_url))
    lock = threading.Lock()

    def send(*message: Any) -> None:
        with lock, contextlib.suppress(OSError):  # the run is gone: finish quietly
            pickle.dump(message, channel)
            channel.flush()

    from . import Context
    from .partitioned import Loop

    summary, claimed, ctx = TaskSummary(task=orders.task.name), 0, None
    try:
        ctx = Context.open(orders.project)
        ctx.watch(stop)
        run, start = orders.feed
        ctx.feed_run = FeedRun(run=run, start=start)
        budget = Budget(deadline=orders.deadline, flush=orders.flush)
        loop = Loop(
            task=orders.task, options=orders.options, summary=summary, budget=budget,
            progress=lambda s, n: send("batch", n, s), stop=stop,
        )  # fmt: skip
        claimed = loop.run(ctx, orders.limit)
    except SluicegateError as exc:
        if ctx is None and isinstance(exc, (exceptions.LedgerError, exceptions.TransientError)):
            # A database out of reach as the helper starts (a restart under way): it claimed nothing,
            # so nothing waits on it; the other workers go on, and meet the outage themselves.
            logging.getLogger("sluicegate").warning("a --workers helper did not start: %s", exc)
        else:
            send("error", type(exc).__name__, str(exc))
    finally:
        if ctx is not None:
            ctx.close()
    send("summary", claimed, summary)
    with contextlib.suppress(OSError):
        channel.close()


def _until_closed(stop: threading.Event) -> None:
    """Set ``stop`` once stdin closes (the run stops, or the process that started us is gone)."""
    with contextlib.suppress(OSError):
        while os.read(0, 4096):  # the fd, not sys.stdin: its buffer's lock would hang the exit
            pass
    stop.set()


def wait_for_source(source: Source, budget: Budget, stop: threading.Event | None, task: str) -> None:
    """Wait for a lost source (a pipeline's ``reconnect``), unless the run is told to stop (before
    or while it waits) or its deadline (--max-runtime) comes first: then raise Deadline, the
    task's loop ends as at any, and what is left of the batch waits for a run. ``task``: its name."""
    stop = stop or threading.Event()
    seconds = min(db.RECONNECT_SECONDS, budget.left())
    try:
        if stop.is_set():
            raise Deadline
        source.reconnect(stop, seconds)
    except SourceLost:
        if stop.is_set():
            raise Deadline from None
        if seconds < db.RECONNECT_SECONDS:  # the run's time is up, not the source's wait
            log.warning("task %s: the run's max_runtime is used up while it waits for the source", task)
            raise Deadline from None
        raise
