"""Path templates: check them at load, render them per unit, never outside the destination.

A template is a :meth:`str.format` string over named fields (the partition keys, a window's
``start``, an archive run's ``boundary``, ``{format}``, ``{ext}``, ``{task}``). Each kind
names its fields; this module checks templates against them and renders them safely:
values that would leave the destination (``..``, a slash) or hide in a listing (control and
format characters) are refused, as terminal errors with a short message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import string
import unicodedata
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from . import validate
from .exceptions import BadPartitionValue, ConfigError

_FORMATTER = string.Formatter()
# Unicode categories refused in paths: control (Cc: NUL..US, DEL, C1 such as U+0085 NEL), format
# (Cf: U+202E RIGHT-TO-LEFT OVERRIDE, zero-width spaces), and the line and paragraph separators.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}
_REFUSED_ASCII = re.compile(r"[\x00-\x1f\x7f\\]")  # the same, for ASCII text: controls, DEL, backslash
SHOWN_CHARS = 40  # how much of a bad value an error message repeats


def shown(text: str) -> str:
    """``text`` for an error message: quoted, cut at SHOWN_CHARS characters with its length."""
    if len(text) <= SHOWN_CHARS:
        return repr(text)
    return f"{text[:SHOWN_CHARS]!r}... ({len(text):,} characters)"


def _refused_char(text: str) -> str | None:
    """The first character of ``text`` that may not appear in a path, or None."""
    if text.isascii():  # the usual path: one regex instead of a category lookup per character
        found = _REFUSED_ASCII.search(text)
        return found.group() if found else None
    for ch in text:
        if ch == "\\" or unicodedata.category(ch) in _REFUSED_CATEGORIES:
            return ch
    return None


def template_fields(template: str) -> set[str]:
    """Return the field names a path template uses."""
    names: set[str] = set()
    for _, field, _, _ in _FORMATTER.parse(template):
        if field is not None:
            names.add(field.split(".")[0].split("[")[0])
    return names


def check_template(
    template: str,
    folder: Path,
    *,
    allowed: Collection[str],
    required: Collection[str],
    what: str = "key",
    where: str | None = None,
    sharing: str | None = None,
    fmt: str | None = None,
) -> None:
    """Raise ConfigError when ``template`` is malformed, uses an unknown field or lacks a required one,
    or (given the task's format ``fmt``) ends in another format's extension written out.

    ``where`` names the setting (default: task.toml's ``path``); ``sharing`` what would share a
    file without a required field (default: two of ``what``)."""
    where = where or f"{folder / 'task.toml'} path"
    try:
        used = template_fields(template)
    except ValueError as exc:
        raise ConfigError(f"{where}: {template!r} is not a valid template ({exc})") from None
    unknown = sorted(used - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: {{{unknown[0]}}} is not {validate.a_or_an(what)};"
            f" use one of {', '.join(sorted(allowed))}"
        )
    missing = [k for k in required if k not in used]
    if missing:
        raise ConfigError(
            f"{where}: the template does not use {{{missing[0]}}}, so {sharing or f'two {what}s'}' files"
            " would share a name"
        )
    if fmt is not None:
        _check_extension(template, fmt, where)


def _check_extension(template: str, fmt: str, where: str) -> None:
    """A template ending in ``.csv.gz`` written out, with ``format = "parquet"`` set since, wrote
    Parquet bytes under the CSV name (over the earlier CSV files, at the same paths)."""
    from .formats import SPECS  # formats read sources, which render paths

    named = [f for f, spec in SPECS.items() if template.endswith(f".{spec.extension}")]
    if named and (written := max(named, key=len)) != fmt:
        raise ConfigError(
            f"{where}: {shown(template)} ends in '.{SPECS[written].extension}' but the format is {fmt!r};"
            " end the path with .{ext} (or set the format the name says)"
        )


def check_value(name: str, value: Any) -> None:
    """Raise BadPartitionValue when a key value cannot be part of a path."""
    if value is None:  # a row with a NULL key: the batch query's `=` never reads it
        raise BadPartitionValue(
            f"partition value {name} is NULL: rows with a NULL key belong to no partition and would "
            f"never be read; give them a value in select.sql (COALESCE({name}, ...)) or leave them out"
        )
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


def render(template: str, named: Mapping[str, Any], *, checked: Collection[str] = ()) -> str:
    """Fill ``template``; the values of ``checked`` fields are checked first. Returns a safe path."""
    for name in checked:
        check_value(name, named[name])
    try:
        rendered = template.format_map(dict(named))
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        detail = shown(repr(dict(named)))
        raise BadPartitionValue(f"path template {template!r} failed for {detail}: {exc}") from None
    return safe_relative_path(rendered)


def safe_relative_path(rendered: str) -> str:
    """Return ``rendered`` when it is a clean relative POSIX path; raise BadPartitionValue otherwise."""
    parts = rendered.split("/")  # a POSIX path is absolute when it starts with "/": parts[0] == ""
    if any(p in ("", ".", "..") for p in parts):
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


def near_times(t: dt.datetime) -> Iterator[dt.datetime]:
    """Times that differ from ``t`` by one second, minute, hour, half day, day, week, month (same
    day, same year), year or century: a path that renders one of them as it renders ``t`` does not
    name that part of ``t`` (``{end:%H%M%S}`` names no day: a four-day window has a one-day one's name).
    A ``t`` with a fraction of a second also gives its whole second (a path without ``%f``)."""
    if t.microsecond:
        yield t.replace(microsecond=0)
    for seconds in (1, 60, 3600, 12 * 3600, 86400, 7 * 86400):
        for sign in (1, -1):
            with contextlib.suppress(OverflowError):
                yield t + sign * dt.timedelta(seconds=seconds)
    months = [t.month + k for k in (1, -1, 2, -2) if 1 <= t.month + k <= 12]
    for month in months:
        with contextlib.suppress(ValueError):  # no 31st in that month
            yield t.replace(month=month)
    for year in (t.year + 1, t.year - 1, t.year + 100, t.year - 100):
        with contextlib.suppress(ValueError):  # no 29 February that year, or out of range
            yield t.replace(year=year)
