"""Read the next record batch while the current one is encoded.

ADBC's driver decodes PostgreSQL's binary ``COPY`` into Arrow memory in ``ReadNext``, which
pyarrow calls without the GIL; the CSV and Parquet encoding of a batch also runs mostly
without it. Done one after the other on the reading thread, the decoding was about 40 % of a
large partition's client time (``py-spy``, ``bench/README.md``). :func:`read_ahead` moves the
reading to a thread of its own, one batch ahead: at most two batches more are in memory, the
one waiting and the one being read. So :data:`.adbc.BATCH_BYTES` asks ADBC for 1 MiB
batches instead of its default 16 MiB: that took 26 MiB off a location-day run's peak RSS
and 93 MiB off a large partition's, at the same speed (``bench/README.md``, "Reading ahead").
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_POLL = 0.1  # seconds between checks, by a reader with a batch to hand over, that the consumer stopped


class _Done:
    """The end of the stream, or the error that ended it."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


@contextlib.contextmanager
def read_ahead(items: Iterable[T], depth: int = 1) -> Iterator[Iterator[T]]:
    """Iterate ``items`` on a thread, ``depth`` items ahead of the consumer.

    An error raised by ``items`` is raised to the consumer, in its place in the stream. On
    leaving the block (early, or by an error of the consumer) the thread stops after the item
    it is reading and is joined, so ``items``' source can be closed safely afterwards.
    """
    handoff: queue.Queue[object] = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def give(item: object) -> bool:
        while not stopped.is_set():
            try:
                handoff.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not give(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            give(_Done(exc))
            return
        give(_Done())

    def consume() -> Iterator[T]:
        while True:
            item = handoff.get()
            if isinstance(item, _Done):
                if item.error is not None:
                    raise item.error
                return
            yield item  # type: ignore[misc]

    thread = threading.Thread(target=produce, name="sluicegate-read-ahead", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stopped.set()
        thread.join()
