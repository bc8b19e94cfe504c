"""Entities named in text (task.toml, ``--entity``, a request, the ledger), read as the entity
column of an incremental task holds them."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import BadPartitionValue
from ..sources import Column

if TYPE_CHECKING:
    from .incremental import Task


def entity_value(
    task: Task, value: Any, columns: Sequence[Column], found: Callable[[], Mapping[str, Any]] = dict
) -> Any:
    """An entity named in text (task.toml, ``--entity``, a request, the ledger) as the entity
    column holds it: an integer column's entity must be written as the integer is ("7", not
    "007" or "+7", which would select entity 7's rows); a text column compares as text; any other
    (float, decimal, date, uuid) takes the source's value whose text it is (``found``: each
    entity's text to its value), else "1.5" matched no REAL 1.5 (no rows, the watermark moved)."""
    column = next((c for c in columns if c.name == task.entity), None)
    number = isinstance(value, int) and not isinstance(value, bool)
    if column is not None and column.kind == "text" and number:
        return str(value)  # entities = [7] in task.toml, for a text column
    if not isinstance(value, str) or column is None or (column.kind == "text" and not column.as_text):
        return value
    if column.kind == "int":
        return _integer(task, value)
    held = found()
    if value in held or column.as_text:  # a type read as text (name, citext) compares with text
        return held.get(value, value)
    raise BadPartitionValue(
        f"entity {value!r} matches no value of column {task.entity!r} (its values are {column.kind}, not "
        f"text); name it as the source writes it, such as {next(iter(held), '1.5')!r}, or wait for its rows"
    )


def _integer(task: Task, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or str(number) != value:
        raise BadPartitionValue(
            f"entity {value!r} is not an integer as written in column {task.entity!r} "
            "(its values are integers); name it as the column holds it, such as "
            f"{str(number) if number is not None else '42'!r}"
        )
    return number


def typed_entity(kind: str, text: str) -> Any:
    """The value of a column of ``kind`` whose text is ``text``, or ``text``: an entity the ledger
    names whose rows were all deleted (no value of the source has that text any more)."""
    read: dict[str, Callable[[str], Any]] = {
        "float": float, "decimal": decimal.Decimal, "date": dt.date.fromisoformat,
        "timestamp": dt.datetime.fromisoformat, "timestamptz": dt.datetime.fromisoformat,
    }  # fmt: skip
    try:
        return read[kind](text) if kind in read else text
    except (ValueError, ArithmeticError):
        return text
