"""A source database lost in the middle of a batch (a restart, a network failure, a terminated backend).

That is no fault of the units being read: the pipeline commits what it had read, gives the rest
of the batch back without an attempt (:class:`~sluicegate.exceptions.SourceLost`) and asks a
:class:`SourceOutage` what next. It waits for the source (:func:`sluicegate.db.reconnect`, with
backoff) and lets the driver claim the units again; it stops the task when the source stays
away. A batch that loses it a second time in the run (a query that crashes the server's
backend would else be read again and again, never charged) is read one unit at a time once the
source is back, and a unit whose own read loses it is charged an attempt instead.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

from . import mariadb_conn, pg_text
from .exceptions import SluicegateError, SourceLost

log = logging.getLogger("sluicegate")

# libpq's own words for a connection that failed or ended (ADBC's errors carry no SQLSTATE, nor
# do psycopg's own connection failures; the server's words come as a FATAL, see connection_lost):
# the server is away or was restarted, no query is at fault. English: the libpq of ADBC's driver
# has no translations.
_LOST_MESSAGES = (
    "server closed the connection",
    "connection refused",
    "connection to server",
    "no connection to the server",
    "could not receive data from server",
    "could not send data to server",
    "consuming input failed",
    "ssl syscall error",
    "connection is closed",
    "failed to connect",
)
# MariaDB: the server shut down or went away, the connection was killed, refused or timed out.
_MARIADB_LOST = frozenset({1053, 1927, 2002, 2003, 2006, 2013, 2055, 4031})


def connection_lost(exc: BaseException) -> bool:
    """Whether a source driver error says the connection itself failed or ended (a restart, a
    network failure, ``pg_terminate_backend``), not the query: then no unit being read is at fault.

    psycopg: no SQLSTATE (a client-side failure) or a FATAL one (the server ended the session); an
    ERROR (say, dblink's own connection failing, SQLSTATE 08001) is the query's. libpq through
    ADBC: a server message of severity FATAL or PANIC, in any language (:mod:`sluicegate.pg_text`),
    libpq's connection messages, or none at all (ADBC's "Failed to prepare query:" with libpq's
    message empty: a call the connection could not carry, say after a cancel that did not reach
    the server); never an ERROR. Called for transient errors only (a missing privilege is
    terminal, see :func:`sluicegate.db.classify`).
    """
    psycopg = sys.modules.get("psycopg")  # not imported here: see sluicegate.db._psycopg
    if psycopg is not None and isinstance(exc, psycopg.Error):
        if not isinstance(exc, psycopg.OperationalError):
            return False
        severity = getattr(getattr(exc, "diag", None), "severity_nonlocalized", None)
        return not getattr(exc, "sqlstate", None) or severity in ("FATAL", "PANIC")
    if mariadb_conn.classify(exc) is not None:
        return getattr(exc, "errno", 0) in _MARIADB_LOST
    if type(exc).__module__.startswith("adbc_driver") or (isinstance(exc, OSError) and "[libpq]" in str(exc)):
        text = str(exc).partition("\nQuery was:")[0].strip()  # not the query's own text
        severity = pg_text.severity(text)
        if severity is not None:
            return severity != "ERROR"  # a FATAL ended the session: "terminating connection ..."
        return text.partition("\n")[0].endswith(":") or any(m in text.lower() for m in _LOST_MESSAGES)
    return False


class SourceOutage:
    """What a pipeline does after losing its source: ``reconnect`` waits for it (None: stop)."""

    def __init__(self, reconnect: Callable[[], None] | None) -> None:
        self.reconnect = reconnect
        self._lost: set[str] = set()  # units whose read lost the source once already

    def before(self, keys: Sequence[str]) -> bool:
        """Whether one of ``keys`` lost the source before in this run: a query that crashes its
        server process, say, which given back would be read again and again and never charged;
        the pipeline reads the batch one unit at a time then, and charges the unit whose own read
        loses it, as any transient failure."""
        return not self._lost.isdisjoint(keys)

    def wait(
        self, keys: Sequence[str], exc: SourceLost, *, charged: bool = False, held: bool = False
    ) -> None:
        """The batch of ``keys`` (given back, ``charged``, or ``held``: kept claimed, to be read
        one unit at a time) lost the source: return once it is back, or raise. Charged too: a
        second loss may be an outage all the same, and the unit, claimed again at once (no
        backoff), would be charged again until parked."""
        self._lost.update(keys)
        if exc.final or self.reconnect is None:
            raise stopped(exc, charged=charged) from exc
        done = (
            "was charged an attempt (it lost the source before)"
            if charged
            else "is held, to be read one unit at a time"
            if held
            else "is pending again"
        )
        log.warning("%s; the batch %s, reconnecting", exc, done)
        try:
            self.reconnect()
        except SourceLost as gone:
            raise stopped(gone, charged=charged) from gone


def read_lost(exc: SluicegateError) -> SluicegateError:
    """``exc``, an error of a read through a :class:`~sluicegate.tabledb.TableDb` (an aggregate's
    select), as a :class:`SourceLost` when its driver error (its cause) says the connection itself
    was lost: a TableDb calls any lost connection its destination's. Else ``exc``."""
    cause = exc.__cause__
    if isinstance(exc, SourceLost) or cause is None or not connection_lost(cause):
        return exc
    return SourceLost(str(exc))


def gave_up(exc: SluicegateError, why: str) -> SluicegateError:
    """The error of a reconnect that gave up (``why``); a lost source's is ``final``."""
    error = type(exc)(f"{exc}; {why}")
    if isinstance(error, SourceLost):
        error.final = True
    return error


def stopped(exc: SourceLost, *, charged: bool = False) -> SourceLost:
    """The error that stops a task whose source is away; the units it held are pending again
    (``charged``: their batch, which lost the source before, was charged an attempt)."""
    said = str(exc).replace("; will retry", "")
    counted = (
        "the task stopped, and the unit (partition, window or tick) that lost it a second time in the run"
        " was charged an attempt"
        if charged
        else "the task stopped and its claimed units are pending again, no attempt counted"
    )
    return SourceLost(f"{said}; {counted}: run it again once the source database is back")
