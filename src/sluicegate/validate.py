"""Checks of single configuration values, shared by ``sluicegate.toml`` and every kind's ``task.toml``.

Each function takes the raw value and ``where`` (the file and the setting, for the message)
and returns the checked value or raises :class:`ConfigError` with one sentence that names
the setting, the value and what to write instead.
"""

from __future__ import annotations

import datetime as dt
import difflib
import math
import re
import urllib.parse
import zoneinfo
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from .exceptions import ConfigError
from .specs import COLUMN_KINDS, FORMATS

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TASK_NAME_RULE = "use only ASCII letters, digits, '_', '.' and '-', and a letter or digit first"
_REGION = re.compile(r"(?![0-9]+$)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)")  # botocore's validate_region_name


def parse_duration(value: str | int | float, *, where: str) -> float:
    """Return seconds for ``value`` such as ``"90s"``, ``"14m"``, ``"72h"`` or ``3600``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{where}: duration {value!r} is negative; use a value such as '30s' or '72h'")
        return _bounded(float(value), value, where)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {value!r} is not a duration; use a value such as '30s', '14m' or '72h'")
    parts = re.findall(r"\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)?", value)
    if not parts or "".join(parts).replace(" ", "") != value.replace(" ", ""):
        raise ConfigError(f"{where}: {value!r} is not a duration; use a value such as '30s', '14m' or '72h'")
    total = 0.0
    for part in parts:
        m = _DURATION.match(part)
        assert m is not None
        total += float(m.group(1)) * _UNITS[m.group(2)]
    return _bounded(total, value, where)


MAX_DURATION = 1000 * 365.25 * 86400  # seconds: past this, times computed from now leave the calendar


def _bounded(seconds: float, value: object, where: str) -> float:
    if not math.isfinite(seconds) or seconds > MAX_DURATION:  # TOML's inf and nan, or 1e300
        raise ConfigError(f"{where}: duration {value!r} is too long; use at most 1000 years ('52000w')")
    return seconds


def reject_unknown(
    raw: Mapping[str, Any], known: Collection[str], where: str, *, what: str = "setting"
) -> None:
    """Raise for the first key of ``raw`` not in ``known``, suggesting the closest known name."""
    unknown = sorted(set(raw) - set(known))
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"known {what}s: {', '.join(sorted(known))}"
    raise ConfigError(f"{where}: unknown {what} {name!r}; {hint}")


def identifier(value: Any, where: str) -> str:
    """A column name: letters, digits and underscores."""
    if not isinstance(value, str) or not NAME.match(value):
        raise ConfigError(f"{where}: {value!r} is not a column name; use letters, digits and underscores")
    return value


def identifiers(value: Any, where: str, example: str) -> tuple[str, ...]:
    """A list of column names."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: use a list of column names, e.g. {example}")
    return tuple(identifier(v, where) for v in value)


def table_name(value: Any, where: str) -> str:
    """A table name, optionally schema-qualified."""
    text = str(value)
    if not all(NAME.match(part) for part in text.split(".")):
        raise ConfigError(f"{where}: {text!r} is not a table name")
    return text


MAX_WHOLE = 2**31 - 1  # a count every ledger database stores as an integer (the CLI's COUNT too)
MIN_LEASE = 1.0  # seconds: claims are renewed every third of the lease


def lease(value: Any, where: str) -> float:
    """A claim's lease: a duration of at least :data:`MIN_LEASE`.

    A lease of 0 let every claim expire before its export committed, so a healthy run parked
    every partition as failed after max_attempts "expired leases".
    """
    seconds = parse_duration(value, where=where)
    if seconds < MIN_LEASE:
        raise ConfigError(f"{where}: {value!r} is too short to renew a claim in; use at least '1s' ('10m')")
    return seconds


def whole_number(value: Any, where: str, minimum: int = 1, maximum: int = MAX_WHOLE) -> int:
    """A whole number from ``minimum`` to ``maximum``."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{where}: {value!r} is not a whole number")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a whole number") from None
    if number < minimum:
        raise ConfigError(f"{where}: {number} is too small; use at least {minimum}")
    if number > maximum:
        raise ConfigError(f"{where}: {number} is too large; use at most {maximum}")
    return number


def boolean(value: Any, where: str) -> bool:
    """true/false (TOML booleans, or the text of an environment variable)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ConfigError(f"{where}: {value!r} is not true or false")


def file_format(value: Any, where: str) -> str:
    """One of the formats sluicegate writes."""
    if value not in FORMATS:
        raise ConfigError(f"{where}: format {value!r} is not supported; use one of {', '.join(FORMATS)}")
    return str(value)


def zone_name(value: Any, where: str) -> str:
    """An IANA time zone name."""
    try:
        zoneinfo.ZoneInfo(str(value))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{where}: {value!r} is not an IANA time zone; use a name such as 'Europe/Brussels'"
        ) from None
    return str(value)


def schema_name(value: Any, where: str) -> str:
    """The ledger schema: a plain SQL identifier, since it is spliced into every ledger statement."""
    if not isinstance(value, str) or not NAME.match(value) or len(value) > 63:
        raise ConfigError(
            f"{where}: {value!r} is not a plain identifier; use letters, digits and underscores, "
            "not starting with a digit, at most 63 characters (e.g. 'sluicegate')"
        )
    return value


class RepeatedKey(ValueError):
    """A JSON object names a key twice: JSON keeps the last without a word."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads`: an object that names a key twice is refused
    (``{"dry_run": true, "dry_run": false}`` was read as a real run)."""
    out = dict(pairs)
    if len(out) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RepeatedKey(f"names field {key!r} twice")
            seen.add(key)
    return out


def is_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8: no lone surrogate (JSON's ``\\ud800``, or a byte read
    with ``surrogateescape``), which no database driver sends."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def choice(value: Any, choices: Collection[str], where: str) -> str:
    """One of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{where}: {value!r} is not valid; use one of {', '.join(choices)}")
    return str(value)


def iso_time(value: Any, where: str) -> dt.datetime:
    """An ISO 8601 time; without an offset it is UTC."""
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise ConfigError(
            f"{where}: {value!r} is not an ISO 8601 time such as 2024-05-01T00:00:00Z"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def schedule(raw: Mapping[str, Any], where: str) -> tuple[str | None, str]:
    """The optional cron ``schedule`` of a task and its ``schedule_zone``."""
    expression = raw.get("schedule")
    zone = str(raw.get("schedule_zone", "UTC"))
    if expression is None:
        return None, zone
    from croniter import croniter

    if not isinstance(expression, str) or not croniter.is_valid(expression):
        raise ConfigError(f"{where} schedule: {expression!r} is not a cron expression such as '*/5 * * * *'")
    now = dt.datetime.now(dt.UTC)
    try:  # valid, yet without a tick ("0 0 30 2 *"): each run and serve's scheduler ended in a traceback
        croniter(expression, now).get_prev(dt.datetime)
        croniter(expression, now).get_next(dt.datetime)
    except ValueError:  # croniter's CroniterBadDateError
        raise ConfigError(
            f"{where} schedule: {expression!r} has no tick before or after now (a date no month has, "
            "such as 30 February, or a year gone by); fix the day, month or year"
        ) from None
    return expression, zone_name(zone, f"{where} schedule_zone")


def column_kinds(raw: Any, where: str, time_column: str | None) -> tuple[tuple[str, str], ...]:
    """``[columns]``: a column kind per result column name, checked against the known kinds."""
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: use a table of column kinds, e.g. [columns] then value = "float"')
    kinds = ", ".join(COLUMN_KINDS)
    pins = []
    for name, kind in raw.items():
        identifier(name, where)
        if kind not in COLUMN_KINDS:
            raise ConfigError(f"{where} {name}: {kind!r} is not a column kind; use one of {kinds}")
        if name == time_column and kind != "timestamptz":
            raise ConfigError(
                f'{where} {name}: the [time] column is always timestamptz; remove it or set "timestamptz"'
            )
        pins.append((str(name), str(kind)))
    return tuple(pins)


def a_or_an(noun: str) -> str:
    """``noun`` with its indefinite article: "an aggregate", "a blocks"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


# The bucket names botocore accepts (an access point's ARN aside): anything else fails every request.
_S3_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# S3 keys hold 1,024 bytes; sluicegate's own objects under the prefix take up to ~70 more
# (_manifests/YYYY/MM/DD/<run>-<seq>.jsonl, .sluicegate-upload-<random>, .sluicegate-probe-<hex>).
S3_PREFIX_MAX = 900


def statement(text: str) -> str:
    """An SQL file's statement without its final ``;``, also one that comments follow
    (``SELECT ... ; -- note`` was passed on with the ``;`` inside sluicegate's query: a syntax error).
    Quoted names, strings and comments are skipped, so ``"semi;--"`` is a name, not a ``;``; text
    this cannot read (a quote never closed) keeps only the old rule, a ``;`` at the very end.
    Line ends are read as Python's text mode reads them: a lone CR ends a ``--`` comment too."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip()
    cuts: list[int] = []  # the ';' after the last token (whitespace and comments between)
    i = 0
    while i < len(text):
        if text[i] in "'\"`":  # a string or quoted name; a doubled quote is one quote in it
            end = text.find(text[i], i + 1)
            while end != -1 and text.startswith(text[i], end + 1):
                end = text.find(text[i], end + 2)
            if end == -1:
                return text.rstrip(";").strip()
            i, cuts = end + 1, []
        elif text.startswith("--", i):
            end = text.find("\n", i)
            i = len(text) if end == -1 else end + 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = len(text) if end == -1 else end + 2
        else:
            if text[i] == ";":
                cuts.append(i)
            elif not text[i].isspace():
                cuts = []
            i += 1
    for cut in reversed(cuts):
        text = text[:cut] + text[cut + 1 :]
    return text.strip()


def text_file(path: Path) -> str:
    """A task or project file's text: one that is not UTF-8, or cannot be read, is a ConfigError
    naming it (it was a UnicodeDecodeError's traceback). FileNotFoundError is the caller's. A
    leading byte-order mark (Notepad's "UTF-8 with BOM") is dropped: TOML and SQL read it as text."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:  # a folder of that name, or a file this user may not read
        raise ConfigError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at byte {exc.start + 1});"
            " save it as UTF-8"
        ) from None


def destination_url(value: Any, where: str) -> str:
    """``[destination] url`` as text, refused (not coerced: ``5`` was a folder "5") when it is
    not text, or when it is an ``s3://`` URL that names no bucket S3 could have."""
    if not isinstance(value, str):
        raise ConfigError(
            f"{where} url: {value!r} is not text; write a quoted folder, s3://BUCKET/prefix or URL"
        )
    if problem := s3_bucket_problem(value):  # else every upload fails, and is retried
        raise ConfigError(f"{where} url: {value!r} {problem}; write s3://BUCKET or s3://BUCKET/prefix")
    return value


def endpoint_url(value: Any, where: str) -> str | None:
    """``[destination] endpoint_url``: a whole http(s) URL with a valid port, or None when unset
    (boto3 raised "Invalid endpoint" with a traceback on ``localhost:9000``, and a port out of
    range failed every upload as a network error to retry)."""
    if value is None or value == "":
        return None
    try:
        parts = urllib.parse.urlsplit(value) if isinstance(value, str) else None
        _ = parts and parts.port  # raises on a port out of range or not a number
    except ValueError:  # that, or a broken IPv6 address
        parts = None
    whole = parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)
    if not whole:
        raise ConfigError(
            f"{where} endpoint_url: {value!r} is not an http(s) URL; write it whole, "
            'e.g. "http://127.0.0.1:9000", or remove it for AWS'
        )
    return str(value)


def region(value: Any, where: str) -> str | None:
    """``[destination] region``: a region name as botocore accepts it, or None when unset
    (botocore's TypeError or InvalidRegionError ended `check` and `run` with a traceback)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _REGION.fullmatch(value):
        raise ConfigError(
            f'{where} region: {value!r} is not a region name; write one such as "eu-west-1", '
            "or remove it for AWS_DEFAULT_REGION"
        )
    return value


def secret_text(value: Any, where: str) -> str | None:
    """A credential setting as text, or None when unset; the value is never shown."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where} is not text; write it in quotes")
    return value


def s3_bucket_problem(url: str) -> str | None:
    """Why an ``s3://`` URL names no bucket S3 could have (``s3://``, ``s3:///prefix``, a name with
    a space) or a prefix with an empty, ``.`` or ``..`` segment (S3-compatible stores rewrite
    ``a//b`` to ``a/b``, so listing the prefix finds nothing, or refuse the key); None when it
    names a bucket and a clean prefix, or is no ``s3://`` URL."""
    if not url.startswith("s3://"):
        return None
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not (bucket.startswith("arn:") or _S3_BUCKET.fullmatch(bucket)):
        return "names no bucket" if not bucket else f"names the bucket {bucket!r}, which S3 does not allow"
    prefix = prefix.rstrip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        return f"has the prefix {prefix!r}, with an empty, '.' or '..' segment that stores rewrite or refuse"
    if _CONTROL.search(prefix):  # S3 takes them, and every tool then shows the keys garbled
        return f"has the prefix {prefix!r}, with a control character (a newline, a tab): remove it"
    if len(prefix.encode()) > S3_PREFIX_MAX:
        return (
            f"has a prefix of {len(prefix.encode()):,} bytes, which leaves too little of S3's 1,024-byte "
            f"key limit for sluicegate's own objects under it; use a prefix of {S3_PREFIX_MAX} bytes or fewer"
        )
    return None
