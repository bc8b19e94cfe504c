"""Ingesting measurement messages into a table: idempotent on the message id, one batch per transaction.

A batch of :class:`~sluicegate.messages.Message` is written in one transaction of the
table's database: the rows with ``INSERT ... ON CONFLICT (id column) DO NOTHING`` (so a
redelivered or duplicated message leaves the row as it is), the malformed messages parked
(``malformed = "park"``), and one log row (:class:`~sluicegate.ledger.ingest.IngestStore`)
with the counts and the message ids. The log row commits with the rows or not at all.

A malformed message (it cannot be read, or the database refuses its row: a value too long,
a NULL where none is allowed) is reported with its id and skipped or parked; the others of
its batch are inserted all the same (each row then goes in under its own savepoint), so one
bad message never blocks a batch, and a batch is never redelivered forever. Any other error
(the database is down, the table is missing) fails the batch: nothing is committed, and an
SQS batch is not deleted, so it comes back.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import itertools
import math
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import db, tables
from .exceptions import DataError, LedgerError, SluicegateError
from .ledger import Ledger
from .ledger.core import DEADLOCK_TRIES
from .messages import Message, clean, parse, shown

if TYPE_CHECKING:
    from .drivers.ingest import Task
    from .sqs import SqsQueue

MAX_REPORTED = 100  # malformed messages listed in a summary
# MariaDB errors about one row's values: NULL, out of range, bad value, too long, foreign key, check.
_MARIADB_ROW_ERRORS = {1048, 1264, 1292, 1366, 1406, 1452, 3819, 4025}
# "Data too long for column 'city' at row 1", "Incorrect decimal value: 'x' for column `db`.`raw`.`v`"
_MARIADB_COLUMN = re.compile(r"column (?:'([^']+)'|(?:`[^`]*`\.)*`([^`]+)`)", re.IGNORECASE)
# A PostgreSQL table's column types as SQL (format_type quotes what needs quoting).
_PG_TYPES = (
    "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a"
    " WHERE a.attrelid = pg_catalog.to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
)


@dataclass(kw_only=True)
class IngestSummary:
    """What an ingest did: messages received, rows inserted, duplicates, malformed ones."""

    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    batches: int = 0
    parked: int = 0  # malformed messages this ingest parked
    already_parked: int = 0  # malformed messages parked before (the same id, or body without an id)
    malformed: list[dict[str, Any]] = field(default_factory=list)  # {"id", "error"[, "parked_before"]}, 100
    malformed_count: int = 0
    malformed_setting: str = "skip"  # the task's `malformed`: "skip" or "park"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)


def row_fault(exc: BaseException) -> bool:
    """Whether a database error is about one row's values (so only that message is malformed)."""
    cause = exc.__cause__ or exc
    sqlstate = getattr(cause, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:  # 54000: an index entry too large (a huge id)
        return sqlstate.startswith(("22", "23", "54000"))
    if isinstance(cause, sqlite3.IntegrityError):
        return True
    if isinstance(cause, sqlite3.Error):
        return "mismatch" in str(cause) or "too big" in str(cause)
    return getattr(cause, "errno", None) in _MARIADB_ROW_ERRORS


class Ingestor:
    """Writes batches of messages into an ingest task's table, with their log, in one transaction each."""

    def __init__(self, task: Task, target: Ledger) -> None:
        self.task = task
        self.target = target  # the ledger tables of the table's database (the source's inbox)
        self.flavor: tables.Flavor = target.dialect.name
        self.columns = [column for column, _ in task.columns]
        self.insert = tables.Insert(
            flavor=self.flavor, table=task.table, columns=tuple(self.columns), mode="insert", key=(task.key,)
        )
        target.ingest.create()
        # the integer columns, which round a fraction away; SQLite: column -> affinity
        self.integers, self.affinities = self._column_types()

    def _column_types(self) -> tuple[set[str], dict[str, str]]:
        table = tables.TableDb(self.target.url)
        try:
            if self.flavor == "sqlite":
                return set(), table.sqlite_affinities(self.task.table)
            return table.integer_columns(self.task.table), {}
        except SluicegateError:  # the table cannot be read: each batch fails on it, saying so
            return set(), {}
        finally:
            table.close()

    def ingest(self, messages: Sequence[Message], summary: IngestSummary) -> None:
        """Write one batch; then each message is inserted, a duplicate, or reported as malformed."""
        good, bad, later = self._split(messages)
        for attempt in itertools.count(1):
            try:
                inserted, refused, parked = self._write(messages, good, bad, later)
                break
            except SluicegateError as exc:
                # Another ingest of the same ids in another order (a file while `serve` drains the
                # queue): the server rolled this batch back whole, so it is simply run again.
                if not db.rolled_back(exc) or attempt >= DEADLOCK_TRIES:
                    raise
                time.sleep(random.uniform(0, 0.05 * attempt))  # let the other one finish
        summary.batches += 1
        summary.received += len(messages)
        summary.inserted += inserted
        summary.duplicates += len(messages) - inserted - len(bad) - len(refused)
        summary.parked += sum(parked)
        summary.already_parked += len(parked) - sum(parked)
        for message, anew in itertools.zip_longest([*bad, *refused], parked):
            summary.malformed_count += 1
            if len(summary.malformed) < MAX_REPORTED:
                before = {"parked_before": True} if anew is False else {}  # said so when it was parked
                summary.malformed.append({"id": message.id, "error": message.error, **before})

    def _write(
        self, messages: Sequence[Message], good: list[Message], bad: list[Message],
        later: dict[str, list[Message]],
    ) -> tuple[int, list[Message], list[bool]]:  # fmt: skip
        """One transaction of the batch: all rows at once, or (when a row is refused) each alone."""
        try:
            return self._commit(messages, good, bad, isolate=False)
        except DataError as exc:
            if not row_fault(exc):
                raise
            return self._commit(messages, good, bad, isolate=True, later=later)
        finally:  # MariaDB: the lock of parking messages without an id, held past the transaction
            self.target.ingest.unlock_parked()

    def _split(
        self, messages: Sequence[Message]
    ) -> tuple[list[Message], list[Message], dict[str, list[Message]]]:
        """The readable messages (the first copy of each id), the malformed ones, and the later
        copies of each id (tried in turn when the table refuses the first one's row)."""
        good: dict[str, Message] = {}
        later: dict[str, list[Message]] = {}
        bad = []
        for message in messages:
            if message.error is not None or message.id is None:
                bad.append(message)
            elif (rounded := self._rounded(message)) is not None:  # a later copy may be whole
                bad.append(dataclasses.replace(message, error=rounded))
            elif message.id in good:
                later.setdefault(message.id, []).append(message)
            else:
                good[message.id] = message
        return list(good.values()), bad, later

    def _rounded(self, message: Message) -> str | None:
        """Why the table would store one of the message's numbers as another: a fraction in an
        integer column (2.5), which PostgreSQL and MariaDB round without a word; or None. A
        numeric(p,s) column rounds to the s places its owner declared: that is not refused."""
        for column, name in self.task.columns:
            value = (message.fields or {}).get(name)
            places = _places(value) if column in self.integers else None
            refused = f"message {message.id}: {self.task.table} refused its row: column {column}"
            refused += f" (field {name}"
            if (made := _sqlite_number(value, self.affinities.get(column))) is not None:
                return (
                    f"{refused}, {shown(value)}): SQLite would store this text as the number {made!r} (a"
                    " 64-bit float), which is another one; send a number a float keeps, or declare the"
                    " column TEXT"
                )
            if places is None or places <= 0:
                continue
            return (
                f"{refused}, {shown(value)}): the column holds whole numbers only and would store the"
                " value rounded; send a whole number, or give the column a type that keeps a fraction"
                " (numeric, double precision)"
            )
        return None

    def _row(self, message: Message) -> tuple[Any, ...]:
        fields = message.fields or {}
        return tuple(self._value(column, fields.get(name)) for column, name in self.task.columns)

    def _value(self, column: str, value: Any) -> Any:
        """A field's value as it is bound: a time as its database takes it; a number for a SQLite
        text column as its shortest text that reads back as it (SQLite wrote 15 digits: 0.3 for
        0.30000000000000004), as PostgreSQL and MariaDB store it."""
        if isinstance(value, dt.datetime):
            return tables.time_value(self.flavor, value)
        if isinstance(value, float) and self.affinities.get(column) == "TEXT":
            return repr(value)
        return value

    def _commit(
        self,
        messages: Sequence[Message],
        good: list[Message],
        bad: list[Message],
        *,
        isolate: bool,
        later: dict[str, list[Message]] | None = None,
    ) -> tuple[int, list[Message], list[bool]]:
        """One transaction: the rows (each under a savepoint if ``isolate``), parked messages, the log.
        Returns the rows inserted, the messages whose row was refused, and (``malformed = "park"``)
        for each malformed message, bad then refused, whether it was parked now (False: before).

        With ``isolate``, a message whose row is refused is followed by the next copy of its id in
        the batch (``later``), until one is inserted or found in the table: a valid message was
        counted a duplicate of a refused one, and never inserted."""
        store, url = self.target.ingest, self.target.url
        with self.target.core.transaction() as cur:
            if self.flavor == "postgresql":  # a `timestamp` column got the database zone's wall clock
                cur.execute("SET LOCAL TimeZone TO 'UTC'")
            refused: list[Message] = []
            parked: list[bool] = []
            if isolate:
                inserted = 0
                for message in good:
                    for copy in (message, *(later or {}).get(message.id or "", ())):
                        before = len(refused)
                        inserted += self._insert_alone(cur, copy, refused)
                        if len(refused) == before:  # inserted, or its id is in the table already
                            break
            else:
                with db.wrap_errors(url):
                    inserted = self.insert.run(cur, [self._row(m) for m in good])
            if self.task.malformed == "park":
                parked = [self._park(cur, message) for message in [*bad, *refused]]
            ids = [m.id or "" for m in messages]
            store.record(cur, self.task.name, received=len(messages), inserted=inserted,
                         malformed=len(bad) + len(refused), ids=ids)  # fmt: skip
        return inserted, refused, parked

    def _park(self, cur: Any, message: Message) -> bool:
        """Park a malformed message under a savepoint; one whose id the parked table's index cannot
        hold (PostgreSQL's index entries end near 2.7 kB) is parked once per body, as one without
        an id, instead of failing its batch (which SQS would deliver again forever)."""
        store, body = self.target.ingest, clean(message.body)
        assert message.error is not None
        error = clean(message.error)
        cur.execute("SAVEPOINT sluicegate_park")
        try:
            parked = store.park(cur, self.task.name, message_id=message.id, body=body, error=error)
        except LedgerError as exc:
            if message.id is None or not row_fault(exc):
                raise
            cur.execute("ROLLBACK TO SAVEPOINT sluicegate_park")
            parked = store.park(cur, self.task.name, message_id=None, body=body, error=error)
        cur.execute("RELEASE SAVEPOINT sluicegate_park")
        return parked

    def _insert_alone(self, cur: Any, message: Message, refused: list[Message]) -> int:
        """Insert one message's row under a savepoint; a refused row is rolled back and reported."""
        cur.execute("SAVEPOINT sluicegate_row")
        try:
            with db.wrap_errors(self.target.url):
                inserted = self.insert.run(cur, [self._row(message)])
        except DataError as exc:
            if not row_fault(exc):
                raise
            cur.execute("ROLLBACK TO SAVEPOINT sluicegate_row")
            culprit = self._culprit(cur, message, exc)
            error = f"message {message.id}: {self.task.table} refused its row: {culprit}{exc}"
            refused.append(dataclasses.replace(message, error=error))
            return 0
        cur.execute("RELEASE SAVEPOINT sluicegate_row")
        return inserted

    def _culprit(self, cur: Any, message: Message, exc: DataError) -> str:
        """``column C (field F, value): `` for the column that refused a message's row, or "".

        MariaDB's error names the column; PostgreSQL's says only "value too long for type
        character varying(8)", "numeric field overflow" or "integer out of range" (a NULL names
        it in the diagnostics), so each value is cast to its column's type, under a savepoint,
        until one is refused (a cast to varchar(n) cuts a long text short: that is compared)."""
        cause = exc.__cause__ or exc
        column = getattr(getattr(cause, "diag", None), "column_name", None)
        value_error = str(getattr(cause, "sqlstate", "")).startswith("22")  # too long, out of range
        if self.flavor == "mariadb":
            column = (found := _MARIADB_COLUMN.search(str(cause))) and (found.group(1) or found.group(2))
        elif self.flavor == "postgresql" and not column and value_error:
            column = self._refusing_column(cur, message)
        fields = dict(self.task.columns)
        if not column or column not in fields:
            return ""
        value = (message.fields or {}).get(fields[column])
        value = value.isoformat() if isinstance(value, dt.datetime) else value
        return f"column {column} (field {fields[column]}, {shown(value)}): "

    def _refusing_column(self, cur: Any, message: Message) -> str | None:
        """The first PostgreSQL column whose type refuses the message's value for it."""
        types = dict(cur.execute(_PG_TYPES, (tables.quote(self.flavor, self.task.table),)).fetchall())
        for column, value in zip(self.columns, self._row(message), strict=True):
            kind = types.get(column)
            if value is None or kind is None:
                continue
            text = kind.startswith(("character", "bit"))  # a cast cuts them short: compare
            cur.execute("SAVEPOINT sluicegate_cast")
            try:
                probe = _probe(kind) if text else f"SELECT CAST(%s AS {kind}) IS NULL"
                kept = cur.execute(probe, (value, value) if text else (value,)).fetchone()[0]
            except Exception as refused:  # the server refused the value (or cannot cast it: go on)
                cur.execute("ROLLBACK TO SAVEPOINT sluicegate_cast")
                if row_fault(refused):
                    return column
                continue
            cur.execute("RELEASE SAVEPOINT sluicegate_cast")
            if text and kept is False:
                return column
        return None


def _places(value: Any) -> int | None:
    """The decimal places a number (or a number's text) has: 0 for 2.0, 1 for 2.5, -2 for 1e+2;
    None for any other value. A float has those of its shortest repr, which reads back as it."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = decimal.Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except decimal.InvalidOperation:
        return None
    exponent = number.normalize().as_tuple().exponent
    return -exponent if isinstance(exponent, int) else None  # NaN, Infinity: the table refuses them


# A number's text SQLite turns into a number in an INTEGER, NUMERIC or REAL column.
_SQLITE_NUMBER = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")


def _sqlite_number(value: Any, affinity: str | None) -> float | None:
    """The float SQLite would store for a number's text in a column of ``affinity`` when that
    float is another number than the text's (``12345678901234567890123``, more than 64 bits for
    an integer; ``9007199254740993`` in a REAL column); None when it keeps the text's number, or
    keeps the text."""
    if not isinstance(value, str) or affinity not in ("INTEGER", "NUMERIC", "REAL"):
        return None
    if not _SQLITE_NUMBER.fullmatch(value):
        return None
    number = decimal.Decimal(value.strip())
    if affinity != "REAL" and number == number.to_integral_value() and -(2**63) <= number < 2**63:
        return None  # an INTEGER, exactly
    made = float(number)
    return None if decimal.Decimal(repr(made)) == number else made  # 1e999: inf, another number


def _probe(kind: str) -> str:
    """Whether a value keeps its text in a column of type ``kind`` (``character``, ``bit``), where
    a cast cuts it short. A ``character`` column stores a number or a time as its text, so that
    text is compared (a number is not comparable with a text), and an excess of spaces only is
    stored too (cut off), so the two are compared without their trailing spaces."""
    if kind.startswith("bit"):
        return f"SELECT CAST(%s AS {kind}) = %s"
    return f"SELECT rtrim(CAST(%s::text AS {kind})::text, ' ') = rtrim(%s::text, ' ')"


def read_lines(lines: Iterable[str | bytes], name: str) -> Iterator[Message]:
    """Messages from JSON lines (blank lines skipped); each names its line, ``name:N``.

    Lines of bytes are decoded here, one by one, so a line that is not UTF-8 is one malformed
    message (with the byte and where it is) and the others are read all the same."""
    for number, raw in enumerate(lines, 1):
        where = f"{name}:{number}"
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield _undecodable(raw, exc, where)
                continue
        else:
            line = raw
        if number == 1:
            line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark (files saved on Windows)
        if line.strip():
            yield parse(line.rstrip("\r\n"), where=where)


def _undecodable(line: bytes, exc: UnicodeDecodeError, where: str) -> Message:
    """A line that is not UTF-8: malformed, kept with its bad bytes as ``\\xff`` (its id if readable)."""
    body = line.rstrip(b"\r\n").decode("utf-8", "backslashreplace")
    ident = parse(line.decode("utf-8", "surrogateescape"), where=where).id
    label = f"{where}: message {ident}: the line" if ident else where  # as messages.parse names it
    error = f"{label} is not UTF-8 text (byte 0x{line[exc.start]:02x} at byte {exc.start + 1})"
    return Message(id=ident, body=body, error=error)


def ingest_lines(ingestor: Ingestor, lines: Iterable[str | bytes], name: str, summary: IngestSummary) -> None:
    """Ingest JSON lines in batches of the task's ``batch_size``."""
    messages = read_lines(lines, name)
    while batch := list(itertools.islice(messages, ingestor.task.batch_size)):
        ingestor.ingest(batch, summary)


def drain(
    ingestor: Ingestor,
    queue: SqsQueue,
    summary: IngestSummary,
    *,
    fault: Callable[[str], None],
    stop: Callable[[], bool] = lambda: False,
    left: Callable[[], float] = lambda: math.inf,
) -> None:
    """Receive, ingest and delete batches until the queue is empty, or ``stop()``, or the run's
    time is up (``left()`` seconds remain): a batch being collected ends then too, and is committed."""
    while not stop():
        batch = queue.receive(ingestor.task.batch_size, stop=stop, left=left)
        if not batch:
            return
        ingestor.ingest(batch, summary)
        fault("after_ingest_commit")  # the rows committed; SQS has not been told
        queue.delete(batch)
