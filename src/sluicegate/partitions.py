"""Partitions: identity, time windows in the partition's own zone, and safe file paths.

A partition is identified by its key values in declared order, the time key last. The time
key is the *local* period: a date for ``grain = "day"`` and an aware local datetime for
``grain = "hour"`` (so the two 01:00 hours of a DST fall-back night stay apart). Its window
is computed with :mod:`zoneinfo`, so a 23- or 25-hour day is exactly as long as it really is.
"""

from __future__ import annotations

import datetime as dt
import json
import string
import unicodedata
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Any

from .config import TaskSpec, TimeSpec
from .exceptions import BadPartitionValue, ConfigError, UsageError

UTC = dt.UTC
BIN_SECONDS = 900  # every zone in use today has an offset that is a multiple of 15 minutes
_EPSILON = dt.timedelta(microseconds=1)


@dataclass(frozen=True, kw_only=True)
class Partition:
    """One unit of work: key values, the zone, and the UTC window the time key spans."""

    task: str
    values: tuple[Any, ...]
    zone: str | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None

    @property
    def pkey(self) -> str:
        """Canonical text identity, unique per task."""
        return canonical_key(self.values)


def canonical_key(values: Sequence[Any]) -> str:
    """Return the canonical JSON text for key ``values`` (dates as ISO strings)."""
    return json.dumps([_jsonable(v) for v in values], separators=(",", ":"), ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


@lru_cache(maxsize=512)
def zone_of(name: str) -> zoneinfo.ZoneInfo:
    """Return the ZoneInfo for ``name`` or raise a terminal error naming it."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise BadPartitionValue(f"time zone {name!r} is not an IANA zone name; fix the zone data") from None


def period_of(instant: dt.datetime, time: TimeSpec, zone: str) -> dt.date | dt.datetime:
    """Return the local period (date or aware hour start) that ``instant`` belongs to.

    With ``boundary = "end"`` (OpenAQ's time-ending convention) an instant exactly on a
    boundary belongs to the period that ends there.
    """
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    if time.boundary == "end":
        instant = instant - _EPSILON
    local = instant.astimezone(zone_of(zone))
    if time.grain == "day":
        return local.date()
    return local.replace(minute=0, second=0, microsecond=0)


def window_of(period: dt.date | dt.datetime, time: TimeSpec, zone: str) -> tuple[dt.datetime, dt.datetime]:
    """Return the UTC ``(start, end)`` of a local period; DST-safe."""
    tz = zone_of(zone)
    if time.grain == "day":
        day = period if not isinstance(period, dt.datetime) else period.date()
        start = dt.datetime.combine(day, dt.time(), tzinfo=tz)
        end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz)
        return start.astimezone(UTC), end.astimezone(UTC)
    assert isinstance(period, dt.datetime)
    start_utc = period.astimezone(UTC)
    return start_utc, start_utc + dt.timedelta(hours=1)


def parse_period(text: str, time: TimeSpec, zone: str) -> dt.date | dt.datetime:
    """Parse a period written by a user or stored in the ledger."""
    try:
        if time.grain == "day":
            return dt.date.fromisoformat(text[:10])
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{time.name}={text!r} is not a valid {time.grain}; use YYYY-MM-DD"
            + ("" if time.grain == "day" else "THH:00 (local time, optional offset)")
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone_of(zone))
    return value.astimezone(zone_of(zone)).replace(minute=0, second=0, microsecond=0)


def make_partition(task: TaskSpec, keys: Sequence[Any], period: Any, zone: str | None) -> Partition:
    """Build a :class:`Partition` from non-time key values and an optional local period."""
    if task.time is None:
        return Partition(task=task.name, values=tuple(keys))
    assert zone is not None
    start, end = window_of(period, task.time, zone)
    return Partition(task=task.name, values=(*keys, period), zone=zone, start=start, end=end)


def restore_partition(task: TaskSpec, values: Sequence[Any], zone: str | None) -> Partition:
    """Rebuild a partition from ledger values (the time key stored as ISO text)."""
    if task.time is None:
        return Partition(task=task.name, values=tuple(values))
    assert zone is not None
    period = parse_period(str(values[-1]), task.time, zone)
    return make_partition(task, values[:-1], period, zone)


# ---------------------------------------------------------------------------- paths

_FORMATTER = string.Formatter()
# Unicode categories refused in paths: control (Cc: NUL..US, DEL, C1 such as U+0085 NEL), format
# (Cf: U+202E RIGHT-TO-LEFT OVERRIDE, zero-width spaces), and the line and paragraph separators.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}
SHOWN_CHARS = 40  # how much of a bad value an error message repeats


def _refused_char(text: str) -> str | None:
    """The first character of ``text`` that may not appear in a path, or None."""
    for ch in text:
        if ch == "\\" or unicodedata.category(ch) in _REFUSED_CATEGORIES:
            return ch
    return None


def shown(text: str) -> str:
    """``text`` for an error message: quoted, cut at SHOWN_CHARS characters with its length."""
    if len(text) <= SHOWN_CHARS:
        return repr(text)
    return f"{text[:SHOWN_CHARS]!r}... ({len(text):,} characters)"


def template_fields(template: str) -> set[str]:
    """Return the field names a path template uses."""
    names: set[str] = set()
    for _, field, _, _ in _FORMATTER.parse(template):
        if field is not None:
            names.add(field.split(".")[0].split("[")[0])
    return names


def check_template(task: TaskSpec) -> None:
    """Raise ConfigError when the task's path template uses unknown names or is malformed."""
    where = f"{task.folder / 'task.toml'} path"
    allowed = {*task.key_names, "format", "ext", "task"}
    if task.incremental is not None:
        allowed = {task.incremental.entity, "type", "start", "end", "format", "ext", "task"}
    if task.archive is not None:
        allowed = {"task", "boundary", "run", "format", "ext"}
    try:
        used = template_fields(task.path)
    except ValueError as exc:
        raise ConfigError(f"{where}: {task.path!r} is not a valid template ({exc})") from None
    unknown = sorted(used - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: {{{unknown[0]}}} is not a partition key; use one of {', '.join(sorted(allowed))}"
        )
    required: tuple[str, ...] = (task.incremental.entity, "start") if task.incremental else task.key_names
    if task.archive is not None:
        required = ()
    missing = [k for k in required if k not in used]
    if missing:
        raise ConfigError(
            f"{where}: the template does not use {{{missing[0]}}}, so two partitions would share a file"
        )
    if task.archive is not None:
        render_archive_path(task, dt.datetime(2024, 1, 31, tzinfo=UTC), "0123abcd")
    elif task.incremental is not None:
        sample = dt.datetime(2024, 1, 31, tzinfo=UTC)
        render_window_path(task, "entity-1", "daily", sample, sample + dt.timedelta(days=1))
    else:
        render_path(task, sample_values(task))


def sample_values(task: TaskSpec) -> tuple[Any, ...]:
    values: list[Any] = [1 for _ in task.keys]
    if task.time:
        values.append(
            dt.date(2024, 1, 31) if task.time.grain == "day" else dt.datetime(2024, 1, 31, 13, tzinfo=UTC)
        )
    return tuple(values)


def _check_value(name: str, value: Any) -> None:
    text = str(value)
    if text in ("", ".", "..") or "/" in text:
        reason = "it is empty, '.', '..' or holds a slash"
    elif (ch := _refused_char(text)) is not None:
        reason = f"it holds the character U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed')})"
    else:
        return
    raise BadPartitionValue(
        f"partition value {name}={shown(text)} cannot be used in a file path: {reason}; "
        "fix the source value or the path template"
    )


def render_path(task: TaskSpec, values: Sequence[Any]) -> str:
    """Render the task's path for partition ``values``; never a path outside the destination."""
    named: dict[str, Any] = dict(zip(task.key_names, values, strict=True))
    for name, value in named.items():
        _check_value(name, value)
    named.update(format=task.format, ext=task.extension, task=task.name)
    return _render(task.path, named)


def render_window_path(
    task: TaskSpec, entity: str, export_type: str, start: dt.datetime, end: dt.datetime
) -> str:
    """Render an incremental task's path for one entity window (times in UTC)."""
    assert task.incremental is not None
    _check_value(task.incremental.entity, entity)
    named = {
        task.incremental.entity: entity,
        "type": export_type,
        "start": start.astimezone(UTC),
        "end": end.astimezone(UTC),
        "format": task.format,
        "ext": task.extension,
        "task": task.name,
    }
    return _render(task.path, named)


def render_archive_path(task: TaskSpec, boundary: dt.datetime, run: str) -> str:
    """Render an archive task's file name for one run (the boundary in the task's zone)."""
    named = {
        "task": task.name,
        "boundary": boundary,
        "run": run,
        "format": task.format,
        "ext": task.extension,
    }
    return _render(task.path, named)


def _render(template: str, named: dict[str, Any]) -> str:
    """Fill ``template`` and check the result stays a clean relative path."""
    try:
        rendered = template.format_map(named)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        detail = shown(repr(named))
        raise BadPartitionValue(f"path template {template!r} failed for {detail}: {exc}") from None
    return safe_relative_path(rendered)


def safe_relative_path(rendered: str) -> str:
    """Return ``rendered`` when it is a clean relative POSIX path; raise BadPartitionValue otherwise."""
    pure = PurePosixPath(rendered)
    parts = rendered.split("/")
    if not rendered or pure.is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise BadPartitionValue(
            f"rendered path {shown(rendered)} is empty, absolute or escapes the destination; "
            "fix the partition value or the path template"
        )
    if (ch := _refused_char(rendered)) is not None:
        raise BadPartitionValue(
            f"rendered path {shown(rendered)} holds the character U+{ord(ch):04X} "
            f"({unicodedata.name(ch, 'unnamed')}); fix the partition value or the path template"
        )
    return rendered


def parse_assignments(task: TaskSpec, pairs: Sequence[str]) -> dict[str, str]:
    """Parse ``KEY=VALUE`` command-line pairs against the task's key names."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in task.key_names:
            names = ", ".join(task.key_names)
            raise UsageError(f"{pair!r} is not KEY=VALUE for task {task.name!r}; keys are: {names}")
        out[key] = value
    return out


def coerce_value(value: str) -> Any:
    """Interpret a command-line key value: integers stay integers, the rest is text."""
    try:
        return int(value)
    except ValueError:
        return value


def keys_from_mapping(task: TaskSpec, mapping: Mapping[str, Any]) -> tuple[Any, ...]:
    """Return the non-time key values of ``mapping`` in declared order."""
    return tuple(mapping[k] for k in task.keys)
