"""Keeping claims alive: a thread that renews the leases of the claims a worker holds.

A claim's lease must outlast whatever the worker waits on while it holds the claim: a source
query that takes longer than the lease to return its first row, a large upload, a commit
waiting for row locks. The thread that waits cannot renew, so :class:`LeaseKeeper` renews
from a thread and a ledger connection of its own, every lease/3, for as long as the tokens
are in hand. A worker that is killed or stopped (SIGSTOP) stops renewing with it, so its
leases run out as before and another worker takes over; its late commit is fenced by the
token (see ``PartitionStore.commit``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from ..exceptions import SluicegateError
from .core import LedgerCore

log = logging.getLogger("sluicegate.ledger")


class Renewing(Protocol):
    """A store whose claims have leases (partitions, watermarks, blocks)."""

    def renew(self, token: str, *, lease: float) -> int:
        """Extend the lease of what is still held under ``token``; return how many rows."""
        ...


class LeaseKeeper:
    """Renews the leases of the tokens in hand every ``lease / 3`` seconds, on its own thread.

    ``store(core)`` makes the store to renew through, on the keeper's own connection to the
    ledger at ``url`` (opened on first use, and reconnected by the core after a lost
    connection). Renewing a token whose claims were committed or given back changes nothing.
    """

    def __init__(
        self, url: str, schema: str, store: Callable[[LedgerCore], Renewing], *, lease: float
    ) -> None:
        self.url = url
        self.schema = schema
        self.make_store = store
        self.lease = lease
        self.every = lease / 3
        self._tokens: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def keep(self, tokens: Iterable[str]) -> None:
        """Renew exactly ``tokens`` from now on (an empty set pauses the renewals)."""
        wanted = {t for t in tokens if t}
        with self._lock:
            self._tokens = wanted
            if wanted and self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sluicegate-leases", daemon=True)
                self._thread.start()

    def close(self) -> None:
        """Stop renewing and close the connection.

        Waits for a renewal in progress at most ``every`` seconds: one stuck on a connection
        that died without a word (a network partition) is left to finish on its own (the
        thread is a daemon), rather than hold up the end of the run.
        """
        self._stop.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=self.every)

    def _loop(self) -> None:
        core: LedgerCore | None = None
        store: Renewing | None = None
        failing = False
        try:
            while not self._stop.wait(self.every):
                with self._lock:
                    tokens = sorted(self._tokens)
                if not tokens:
                    continue
                try:
                    if core is None or store is None:
                        core = LedgerCore(self.url, schema=self.schema, stop=self._stop)
                        store = self.make_store(core)
                    for token in tokens:
                        store.renew(token, lease=self.lease)
                    failing = False
                except SluicegateError as exc:  # the next round tries again; the commit is fenced
                    # Once per outage as a warning (a ledger that is down says so every lease/3).
                    log.log(
                        logging.DEBUG if failing else logging.WARNING,
                        "could not renew the leases of %d claim(s): %s; trying again every %.1f s",
                        len(tokens),
                        exc,
                        self.every,
                    )
                    failing = True
        finally:
            if core is not None:
                core.close()
