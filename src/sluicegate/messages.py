"""OpenAQ-style measurement messages, as ingest tasks receive them, checked one by one.

Three shapes are read into the same fields (:data:`FIELDS`):

* an **SNS notification** (an SQS body when the queue subscribes to an SNS topic, which is
  what airmax's Lambda received): ``MessageId`` is the id, ``Timestamp`` the send time, and
  each ``MessageAttributes`` entry (``{"Type": "String", "Value": ...}``) a field: airmax's
  ``date_utc``, ``country``, ``location``, ``city``, ``latitude``, ``longitude``,
  ``sourceType``, ``sourceName``, ``parameter``, ``unit``, ``value``. A JSON ``Message`` of the
  OpenAQ shape fills the fields its attributes do not carry;
* an **OpenAQ measurement** object: ``location``, ``parameter``, ``value``, ``unit``,
  ``date: {"utc": ...}``, ``coordinates: {"latitude", "longitude"}``, ``country``, ``city``,
  ``sourceName``, ``sourceType``, and an ``id`` (or ``message_id``);
* a **flat** object with the field names themselves (what ``sluicegate ingest`` reads as JSON
  lines), also with SQS message attributes (``StringValue``) when SNS delivered raw.

A message that cannot be read (not JSON, no id, a missing field, a value that is not a
number, too large for one or a whole number a float changes, a time that is not ISO 8601 or
outside years 1 to 9999 in UTC, a text that is not valid Unicode or holds a NUL) becomes a
:class:`Message` with an ``error`` naming its id and the field, never an exception: one bad
message must not hold up the others.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .validate import RepeatedKey, unique_keys

FIELDS = (
    "id", "sent_at", "date_utc", "country", "location", "city", "latitude", "longitude",
    "sourceType", "sourceName", "parameter", "unit", "value",
)  # fmt: skip
REQUIRED = ("id", "date_utc", "city", "parameter", "unit", "value")
TIMES = ("sent_at", "date_utc")
NUMBERS = ("latitude", "longitude", "value")
# airmax's raw table: column -> field (the default [columns] of an ingest task)
AIRMAX_COLUMNS: dict[str, str] = {
    "message_id": "id",
    "message_send_time_utc": "sent_at",
    "measurement_time_utc": "date_utc",
    "country_code": "country",
    "location": "location",
    "city": "city",
    "latitude": "latitude",
    "longitude": "longitude",
    "source_type": "sourceType",
    "source_name": "sourceName",
    "parameter_name": "parameter",
    "parameter_value": "value",
    "parameter_unit": "unit",
}
SHOWN = 60  # characters of a bad value repeated in a message
OUT_OF_RANGE = dt.datetime.min.replace(tzinfo=dt.UTC)  # _time's answer for a time beyond years 1 to 9999


@dataclass(frozen=True, kw_only=True)
class Message:
    """One received message: its fields when it could be read, else the reason it could not."""

    id: str | None
    body: str
    fields: Mapping[str, Any] | None = None
    error: str | None = None
    receipt: str | None = None  # SQS receipt handle, to delete it once it is handled

    @property
    def label(self) -> str:
        """How messages name it: its id, or where it came from."""
        return self.id or "(no id)"


def parse(
    body: str,
    *,
    where: str = "",
    receipt: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    fallback_id: str | None = None,
) -> Message:
    """Read one message body (SNS envelope, OpenAQ object or flat object) and check its fields.

    ``attributes`` are SQS message attributes (raw delivery); ``fallback_id`` the SQS message
    id, used when the body carries none; ``where`` names a JSON line (``file:12``).
    """
    try:
        obj = _loads(body)
    except RepeatedKey as exc:  # JSON keeps the last: which value the sender meant is unknown
        return Message(id=fallback_id, body=body, error=f"{where or 'body'} {exc}", receipt=receipt)
    except ValueError as exc:
        return Message(
            id=fallback_id, body=body, error=f"{where or 'body'} is not JSON ({exc})", receipt=receipt
        )
    if not isinstance(obj, dict):
        return Message(
            id=fallback_id, body=body, error=f"{where or 'body'} is not a JSON object", receipt=receipt
        )
    try:
        raw = _fields(obj, attributes or {})
    except RepeatedKey as exc:  # in an SNS notification's Message: its fields were dropped unsaid
        label = (f"{where}: " if where else "") + f"message {clean(str(obj['MessageId']))}"
        return Message(id=clean(str(obj["MessageId"])), body=body, error=f"{label}: {exc}", receipt=receipt)
    if raw.get("id") in (None, "") and fallback_id:
        raw["id"] = fallback_id
    ident = None if raw.get("id") in (None, "") else clean(str(raw["id"]))
    if isinstance(raw.get("id"), bool | float | dict | list | _Literal):  # True was stored as the id "True"
        given = raw["id"] if isinstance(raw["id"], _Literal) else json.dumps(raw["id"])[:80]
        return Message(
            id=None, body=body, error=f"{where or 'a message'}: id {given} is not a message id; give a"
            " string or an integer", receipt=receipt,
        )  # fmt: skip
    fields, error = _check(raw)
    if error is not None:
        label = (
            (f"{where}: " if where else "") + f"message {ident}"
            if ident
            else f"{where or 'a message'} (no id)"
        )
        return Message(id=ident, body=body, error=f"{label}: {error}", receipt=receipt)
    return Message(id=ident, body=body, fields=fields, receipt=receipt)


def _fields(obj: Mapping[str, Any], attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The raw field values of one message, from whichever shape it has."""
    if obj.get("Type") == "Notification" and "MessageId" in obj:
        inner: Any = obj.get("Message")
        try:
            inner = _loads(inner) if isinstance(inner, str) else inner
        except RepeatedKey as exc:  # its fields were dropped: which value the sender meant is unknown
            raise RepeatedKey(f"Message {exc}") from None
        except ValueError:  # a text, not JSON: the attributes carry the fields
            inner = None
        raw = _openaq(inner) if isinstance(inner, dict) else {}
        raw.update(_attributes(obj.get("MessageAttributes") or {}, "Value"))
        raw["id"], raw["sent_at"] = obj["MessageId"], obj.get("Timestamp", raw.get("sent_at"))
        return raw
    raw = _openaq(obj)
    raw.update(_attributes(attributes, "StringValue"))
    return raw


def _openaq(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Flat fields of an OpenAQ measurement (or of a flat object, which passes through)."""
    raw = {k: obj[k] for k in FIELDS if k in obj}
    if "id" not in raw and "message_id" in obj:
        raw["id"] = obj["message_id"]
    date = obj.get("date")
    if "date_utc" not in raw and isinstance(date, dict) and "utc" in date:
        raw["date_utc"] = date["utc"]
    coordinates = obj.get("coordinates")
    if isinstance(coordinates, dict):
        raw.setdefault("latitude", coordinates.get("latitude"))
        raw.setdefault("longitude", coordinates.get("longitude"))
    return raw


def _attributes(attributes: Mapping[str, Any], value_key: str) -> dict[str, Any]:
    """Message attributes (``{"name": {"Type": ..., "Value": ...}}``) as fields."""
    return {
        name: entry.get(value_key)
        for name, entry in attributes.items()
        if name in FIELDS and isinstance(entry, dict) and value_key in entry
    }


def _check(raw: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """Typed fields (times aware UTC, numbers float, the rest text), or the first problem."""
    for name in REQUIRED:
        if raw.get(name) in (None, ""):
            return None, f"{name} is missing"
    fields: dict[str, Any] = {}
    for name in FIELDS:
        value = raw.get(name)
        if value is None or value == "":
            fields[name] = None
        elif name in TIMES:
            fields[name] = _time(value)
            if fields[name] is None:
                return None, f"{name} {shown(value)} is not an ISO 8601 time such as 2024-05-01T12:00:00Z"
            if fields[name] is OUT_OF_RANGE:
                return None, f"{name} {shown(value)} is outside years 1 to 9999 in UTC"
        elif name in NUMBERS:
            fields[name], error = _number_field(name, value)
            if error is not None:
                return None, error
        elif isinstance(value, bool):  # a JSON true in a text field is the text "true", not "True"
            fields[name] = json.dumps(value)
        elif isinstance(value, dict | list):
            return None, f"{name} {shown(value)} is not a text"
        elif "\x00" in str(value):
            return None, f"{name} {shown(value)} is not a text a database can store (it holds a NUL)"
        elif clean(str(value)) != str(value):
            return None, f"{name} {shown(value)} is not valid Unicode text (it holds a lone surrogate)"
        else:
            fields[name] = str(value)
    return fields, None


def _number_field(name: str, value: Any) -> tuple[float | None, str | None]:
    """A number field's float, or why it has none: the float must be the number written."""
    number = _number(value)
    if number is None:
        return None, f"{name} {shown(value)} is not a number"
    if not math.isfinite(number):
        return None, f"{name} {shown(value)} is beyond the range of a number (a 64-bit float)"
    if _inexact(value, number):
        return None, (
            f"{name} {shown(value)} is a whole number with more significant digits than a number"
            f" keeps (a 64-bit float is exact up to 2**53 = 9007199254740992), so it would be stored"
            f" as {number!r}; send a whole number within 2**53"
        )
    return number, None


def _time(value: Any) -> dt.datetime | None:
    """An ISO 8601 time as aware UTC; without an offset it is taken as UTC (``date_utc``).

    None when it is not one; :data:`OUT_OF_RANGE` when its UTC falls outside years 1 to 9999
    (``0001-01-01T00:00:00+01:00``)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    try:
        return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)
    except OverflowError:
        return OUT_OF_RANGE


_DIGIT = re.compile(r"[0-9]")


class _Literal(str):
    """A JSON number with a fraction or an exponent (``1.10``, ``1e5``, ``1e400``), or
    ``NaN``/``Infinity`` (which JSON has not), as written: json.loads made them floats, so a
    message showed ``inf`` for ``1e400``, a text field stored ``1e5`` as ``100000.0``, and digits
    no float keeps were dropped unsaid. A number field reads it as a float (refusing it by its
    own spelling when no float holds it); a text field keeps it as written."""

    def __repr__(self) -> str:
        return str(self)


def _loads(text: str) -> Any:
    """JSON, with numbers that have a fraction or an exponent, and NaN/Infinity, kept as written
    (see _Literal)."""
    try:
        return json.loads(text, parse_float=_Literal, parse_constant=_Literal, object_pairs_hook=unique_keys)
    except RecursionError:  # arrays or objects nested too deep: a malformed message, not a crash
        raise ValueError("it is nested too deeply") from None


def _inexact(value: Any, number: float) -> bool:
    """Whether ``value`` (a JSON number or a number's text) is a whole number that ``number``, the
    float read from it, changes (``9007199254740993``, beyond 2**53): an id or a counter silently
    made another. A number with a fraction is read as its nearest float, which is what a float
    column stores anyway: many producers print 17 significant digits (C's ``%.17g``, PHP's
    ``serialize_precision = 17``, Java), ``0.10000000000000001`` for ``0.1``, and
    ``9.9999999999999992e+22`` for ``1e23``: a number with a point or an exponent is such a
    print. A whole number the float holds exactly (``2**60``) is kept, compared with the float's
    exact value, not its shortest digits."""
    text = str(value).strip()
    if any(c in text for c in ".eE"):
        return False
    try:
        written = decimal.Decimal(text)
    except decimal.InvalidOperation:  # not a decimal number: nothing was dropped from it
        return False
    return written != decimal.Decimal(number)


def _number(value: Any) -> float | None:
    """A float (infinite when it is too large for one: ``1`` and 400 zeros), or None (also NaN)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and (
        value != value.strip() or "_" in value or not value.isascii() or not _DIGIT.search(value)
    ):  # Python's float() takes " 5 ", "1_000", "Infinity", "nan" and "1٢" (12.0): JSON numbers do not
        return None
    try:
        number = float(value)
    except OverflowError:
        return math.inf
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def clean(text: str) -> str:
    """``text`` as every database stores it and a terminal prints it: lone surrogates (a JSON
    ``\\ud800``, an undecodable byte read with ``surrogateescape``) and NUL (which PostgreSQL
    refuses in text) become backslash escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def shown(value: Any) -> str:
    """``value`` as a message repeats it: its repr (a JSON boolean as JSON spells it, ``true``,
    not Python's ``True``), cut after :data:`SHOWN` characters."""
    text = json.dumps(value) if isinstance(value, bool) else repr(value)
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}... ({len(text):,} characters)"
