"""Key values and periods as a command line writes them (``KEY=VALUE``): parsed against a task's
keys, read as the integer or text a partition holds, and matched against the values and periods
partitions recorded."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from .exceptions import UsageError
from .partitions import PartitionKeys, parse_period, plain_key
from .specs import TimeSpec

_HOUR = dt.timedelta(hours=1)


def parse_assignments(task: PartitionKeys, pairs: Sequence[str]) -> dict[str, str]:
    """Parse ``KEY=VALUE`` command-line pairs against the task's key names."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in task.key_names:
            names = ", ".join(task.key_names)
            raise UsageError(f"{pair!r} is not KEY=VALUE for task {task.name!r}; keys are: {names}")
        if key in out and out[key] != value:
            raise UsageError(f"{key} is given twice ({out[key]!r} and {value!r}); give each key once")
        out[key] = value
    return out


_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")


def coerce_value(value: str, *, unsigned: bool = False) -> Any:
    """Interpret a command-line key value: an integer as written in SQL (``7``, ``-3``, within 64
    bits) is an integer; anything else (``007``, ``1_0``, `` 7``, a 30-digit id) stays text.
    ``unsigned``: up to 2^64 - 1 too, which a MariaDB ``BIGINT UNSIGNED`` key column holds."""
    if _INTEGER.fullmatch(value) and -(2**63) <= (number := int(value)) < 2 ** (64 if unsigned else 63):
        return number
    return value


def reads_as(recorded: Any, text: str) -> bool:
    """Whether a key value a partition holds is the one a command line's ``text`` names, read as
    a value of its kind: the text '7' or the integer 7, the float 1.5 for ``1.50``. What the source
    says a key column holds is not needed, so a filter matches when the source is out of reach
    or its select returns no row to tell a kind by."""
    if isinstance(recorded, str):
        return recorded == text
    if isinstance(recorded, bool):
        return False
    if isinstance(recorded, int):
        return bool(coerce_value(text, unsigned=True) == recorded)
    if isinstance(recorded, float):
        try:
            return bool(plain_key(Decimal(text.strip())) == recorded)
        except ArithmeticError:
            return False
    return False


def period_filter(time: TimeSpec, text: str) -> Callable[[Any, dt.datetime | None, dt.datetime | None], bool]:
    """Whether a partition (its stored time key and UTC window) is the period a user wrote
    (``reexport day=2024-05-03``); one ``mark`` would refuse is a UsageError. A day matches its
    date however ISO 8601 writes it, an hour with an offset the hour holding that instant, one
    without the local hour it names (both hours of a fall-back night)."""
    period = parse_period(text, time, "UTC", strict=True)
    if time.grain == "day":
        return lambda stored, start, end: str(stored) == period.isoformat()
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is not None:
        return lambda stored, start, end: start is not None and end is not None and start <= value < end

    def wall(stored: Any, start: dt.datetime | None, end: dt.datetime | None) -> bool:
        local = dt.datetime.fromisoformat(str(stored)).replace(tzinfo=None)
        return local <= value < local + _HOUR

    return wall
