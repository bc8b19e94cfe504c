"""The sluicegate exception hierarchy.

Every error a user can cause or meet is a :class:`SluicegateError` whose message is one
sentence naming the file, field or value and what to do. The CLI prints it without a
traceback (``-v`` shows one) and maps :class:`ConfigError` to exit code 2.

::

    SluicegateError
    ├── ConfigError            bad project, task or environment setting (exit 2)
    ├── UsageError             bad command-line or API arguments (exit 2)
    ├── LedgerError            the ledger database misbehaved
    │   └── LedgerPermissionDenied   (also a PermissionDenied)
    └── ExportError            exporting one partition failed (recorded on the ledger)
        ├── TransientError     worth retrying with backoff (network, 5xx, timeouts)
        │   ├── SourceUnavailable
        │   │   ├── SourceLost     the connection itself (a restart, a network failure): no attempt
        │   │   └── StatementTimedOut  the query's time limit: its batch is read one unit at a time
        │   └── DestinationUnavailable
        └── TerminalError      retrying will not help (bad data, bad path, bad query)
            ├── BadPartitionValue
            ├── DataError
            └── PermissionDenied   the role lacks a privilege (SQLSTATE 42501)
                └── LedgerPermissionDenied   ... on the ledger: stops the task

A privilege does not appear by waiting, so :class:`PermissionDenied` is terminal and never
retried or reconnected for; ``sluicegate grants`` prints the GRANTs each task kind needs.

Whether a partition is retried is decided only by :func:`is_transient`. A value a message
quotes from the source, the ledger or a task (a key value, an entity) goes through
:func:`printable`, so a newline in it cannot split the message's line in two.
"""

from __future__ import annotations

import copy
import unicodedata
from typing import Any, TypeVar


class SluicegateError(Exception):
    """sluicegate failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(SluicegateError):
    """The project configuration is invalid; fix the named file or setting and run again."""


class UsageError(SluicegateError):
    """The command was called with invalid arguments."""


class LedgerError(SluicegateError):
    """The ledger database could not be read or written."""


class ExportError(SluicegateError):
    """Exporting a partition failed."""


class TransientError(ExportError):
    """A temporary failure; the partition is retried with backoff."""


class SourceUnavailable(TransientError):
    """The source database could not be reached or the query was interrupted."""


class StatementTimedOut(SourceUnavailable):
    """The database cancelled a source query for its time limit (PostgreSQL's ``statement_timeout``,
    MariaDB's ``max_statement_time``, MySQL's ``max_execution_time``; on PostgreSQL an operator's
    ``pg_cancel_backend`` too, of the same SQLSTATE: see db.timed_out). The database is there, and
    a batch's query may run out of the limit where each of its units' queries would not: the
    pipeline reads such a batch one unit at a time."""

    @classmethod
    def said(cls, where: str, detail: str) -> StatementTimedOut:
        """The error for the database's ``detail`` about its query at ``where``."""
        return cls(f"{where}: {detail} (raise it or make the query faster); will retry")


class SourceLost(SourceUnavailable):
    """The connection to the source database was lost or refused (a restart, a network failure).

    No fault of the units being read: the pipeline gives them back without an attempt and waits
    for the source (:func:`sluicegate.db.reconnect`); ``final`` when that wait gave up.
    """

    final = False


class DestinationUnavailable(TransientError):
    """The destination could not be written right now (network error, 5xx, timeout)."""


class TerminalError(ExportError):
    """A failure that retrying cannot fix; the partition is parked as failed."""


class NotFound(TerminalError):
    """A file the destination was asked to read is not there (not one it could not read)."""


class BadPartitionValue(TerminalError):
    """A partition value cannot be used in a file path."""


class DataError(TerminalError):
    """The rows of a partition could not be read or encoded."""


class PermissionDenied(TerminalError):
    """The database role lacks a privilege; run `sluicegate grants` and apply its GRANTs as the owner."""


class LedgerPermissionDenied(PermissionDenied, LedgerError):
    """The database role lacks a privilege on the ledger tables; run `sluicegate grants` and apply them."""


class StopNow(SystemExit):
    """A second SIGINT or SIGTERM: the run stops at once (not a callable's own ``sys.exit()``)."""


def printable(value: Any) -> str:
    """A value from the source or the ledger for a message or a terminal line: as it is, or quoted
    (``'a\\nb'``) when it holds a character a terminal would act on (a newline, an escape, a NUL),
    or when bare it would look like another value: empty, spaces at an end (``' s1'`` and ``s1``
    are two entities), or a letter written in another Unicode form (``'e\\u0301'`` against ``é``)."""
    text = str(value)
    if not unicodedata.is_normalized("NFC", text):
        return ascii(text)  # 'e\u0301': repr would print the same glyph as the composed letter
    return text if text.isprintable() and text and text == text.strip() else repr(text)


_E = TypeVar("_E", bound=BaseException)


def prefixed(exc: _E, where: str) -> _E:
    """A copy of ``exc`` whose message starts with ``where`` (the task and query it came from),
    its class and attributes kept: a timeout stays a timeout, a lost source a lost source."""
    named = copy.copy(exc)
    named.args = (f"{where}: {exc}",)
    return named


def is_transient(exc: BaseException) -> bool:
    """Return True when ``exc`` is worth retrying later.

    Unknown exceptions count as terminal: retrying a programming error with backoff only
    hides it, while a parked partition is visible in ``sluicegate status``.
    """
    return isinstance(exc, TransientError)


def timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is a source query the database cancelled for its time limit: a batch's query
    may run out of it where each of its units' queries would not, so the batch is read one unit
    at a time."""
    return isinstance(exc, StatementTimedOut)
