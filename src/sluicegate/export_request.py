"""What an incremental run is asked to export: the Bridge Exporter request and its checks.

One :class:`ExportRequest` comes from the CLI, a request message (``load_request``), the HTTP
service or a Python call; every entry point gets the same checks, before any claim.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import validate
from .destinations import local_folder
from .exceptions import UsageError
from .masking import mask_url
from .partitions import in_range

UTC = dt.UTC
ExportType = Literal["daily", "hourly", "instant"]
EXPORT_TYPES = ("daily", "hourly", "instant")
REQUEST_FIELDS = (
    "endDateTime",
    "startDateTime",
    "exportType",
    "ignoreLastExportTime",
    "studyWhitelist",
    "tag",
)

EMPTY_DESTINATION = "the destination is empty; give a folder, file:// or s3:// URL, or leave it out"


@dataclass(frozen=True, kw_only=True)
class ExportRequest:
    """What an incremental run exports (from the CLI, a request message or a Python call)."""

    export_type: str | None = None
    start: dt.datetime | None = None
    end: dt.datetime | None = None
    ignore_watermark: bool = False
    entities: tuple[str, ...] = ()
    tag: str | None = None
    destination: str | None = None

    def __post_init__(self) -> None:
        # From every entry point (CLI, request, HTTP, Python): a time without an offset is UTC, one
        # that cannot be windowed is refused before any claim, and so is text no database keeps.
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, in_range(value, f"the window's {name}"))
        if self.destination is not None and not self.destination.strip():  # else a regular export ran
            raise UsageError(EMPTY_DESTINATION)
        folder = local_folder(self.destination) if self.destination else None
        if folder is not None:
            # A folder, absolute as the local destination resolves it: the ledger records a
            # failed re-export's destination for redrive, which may run from another folder.
            object.__setattr__(self, "destination", str(Path(folder).resolve()))
        for name, text in [("tag", self.tag), *(("an entity", e) for e in self.entities)]:
            if isinstance(text, str) and not validate.is_unicode(text):
                raise UsageError(f"{name} {text!r} is not valid Unicode text; write it in UTF-8")
            if isinstance(text, str) and any(unicodedata.category(c) == "Cc" for c in text):
                raise UsageError(f"{name} {text!r} holds a control character; write it without one")

    @property
    def touches_watermarks(self) -> bool:
        """False for re-exports (explicit window, or another destination)."""
        return not (self.ignore_watermark or self.destination)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the destination URL is masked)."""
        out = dataclasses.asdict(self)
        if self.destination:
            out["destination"] = mask_url(self.destination)
        return out


def _parse_time(value: Any, field: str) -> dt.datetime:
    if not isinstance(value, str):
        raise UsageError(f"{field}: {value!r} is not an ISO 8601 date-time such as 2016-10-04T23:59:59Z")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"{field}: {value!r} is not an ISO 8601 date-time such as 2016-10-04T23:59:59Z"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parse_bool(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"  # the documented re-export message writes "true" as a string
    raise UsageError(f"{field}: {value!r} is not true or false")


def parse_request(data: Mapping[str, Any]) -> ExportRequest:
    """Validate a Bridge Exporter request message (v1 fields and rules).

    One deliberate difference: an ``exportType`` beside an explicit ``startDateTime`` is
    accepted when ``ignoreLastExportTime`` is true (the original's own documented
    re-export message does this); the type then only labels the files.
    """
    if not isinstance(data, Mapping):
        raise UsageError("the request must be a JSON object")
    unknown = sorted(set(data) - set(REQUEST_FIELDS))
    if unknown:
        raise UsageError(
            f"request field {unknown[0]!r} is not supported; use only {', '.join(REQUEST_FIELDS)}"
        )
    ignore = _parse_bool(data.get("ignoreLastExportTime", False), "ignoreLastExportTime")
    export_type = data.get("exportType")
    if export_type is not None:
        if not isinstance(export_type, str) or export_type.lower() not in EXPORT_TYPES:
            raise UsageError(f"exportType: {export_type!r} is not valid; use DAILY, HOURLY or INSTANT")
        export_type = export_type.lower()
    start = (
        _parse_time(data["startDateTime"], "startDateTime") if data.get("startDateTime") is not None else None
    )
    end = _parse_time(data["endDateTime"], "endDateTime") if data.get("endDateTime") is not None else None
    whitelist = data.get("studyWhitelist")
    if whitelist is not None and (not isinstance(whitelist, list) or not whitelist):
        raise UsageError(
            "studyWhitelist: give a non-empty list of study ids, or leave it out for all studies"
        )
    odd = [s for s in whitelist or () if isinstance(s, bool) or not isinstance(s, str | int) or s == ""]
    if odd:
        raise UsageError(f"studyWhitelist: {json.dumps(odd[0])} is not a study id; give strings or integers")
    _check_window(start, end, ignore)
    _check_type(export_type, start, end, bool(whitelist))
    tag = data.get("tag")
    if tag is not None and not isinstance(tag, str):
        raise UsageError(f"tag: {json.dumps(tag)} is not a string")
    return ExportRequest(
        export_type=export_type or "daily",
        start=start,
        end=end,
        ignore_watermark=ignore,
        entities=tuple(str(s) for s in whitelist or ()),
        tag=None if tag is None else str(tag),
    )


def _check_window(start: dt.datetime | None, end: dt.datetime | None, ignore: bool) -> None:
    """An explicit window needs ignoreLastExportTime and an end after its start."""
    if start is not None:
        if not ignore:
            raise UsageError(
                "startDateTime requires ignoreLastExportTime=true (a re-export of an explicit window)"
            )
        if end is None:
            raise UsageError("startDateTime requires endDateTime")
        if start >= end:
            raise UsageError(
                f"startDateTime {start.isoformat()} must be before endDateTime {end.isoformat()}"
            )
    elif ignore:
        raise UsageError(
            "ignoreLastExportTime=true needs startDateTime and endDateTime: the window to re-export"
        )


def _check_type(
    export_type: str | None, start: dt.datetime | None, end: dt.datetime | None, listed: bool
) -> None:
    """DAILY and HOURLY need an end, INSTANT must have none, HOURLY and INSTANT need studies."""
    if export_type is None and start is None:
        raise UsageError(
            "give exportType (DAILY, HOURLY or INSTANT), or startDateTime with ignoreLastExportTime=true"
        )
    if export_type in ("daily", "hourly") and end is None:
        raise UsageError(f"{export_type.upper()} exports require endDateTime")
    if export_type == "instant" and end is not None:
        raise UsageError("INSTANT exports must not have endDateTime (the end is now minus the safety margin)")
    if export_type in ("instant", "hourly") and not listed:
        raise UsageError(f"{export_type.upper()} exports require studyWhitelist")


def load_request(text: str) -> ExportRequest:
    """Parse a request message from JSON text."""
    try:
        data = json.loads(text, object_pairs_hook=validate.unique_keys)
    except validate.RepeatedKey as exc:
        raise UsageError(f"the request {exc}; give each field once") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"the request is not valid JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # an integer of 4,301+ digits; arrays nested too deep
        # Not a JSONDecodeError: it escaped as a traceback, and in Lambda it failed the whole
        # SQS batch, so one such message sent every other one back (and to the dead-letter queue).
        raise UsageError(f"the request is not JSON sluicegate can read: {exc}") from None
    return parse_request(data)


def time_range(time_min: dt.datetime | None, time_max: dt.datetime | None) -> None:
    """Refuse a time range that holds nothing (it used to mark, re-queue or export nothing, exit 0)."""
    if time_min and time_max and time_min >= time_max:
        raise UsageError(
            f"--time-min/time_min {time_min.isoformat()} must be before --time-max/time_max"
            f" {time_max.isoformat()}"
        )


def request_from_options(
    *,
    export_type: str | None,
    ignore_watermark: bool,
    time_min: dt.datetime | None,
    time_max: dt.datetime | None,
    entities: Sequence[str],
    destination: str | None,
    tag: str | None,
) -> ExportRequest | None:
    """Build an incremental export request from run options (None when none were given)."""
    sent = destination is not None  # "" too: ExportRequest refuses it (it was a regular export)
    if not (export_type or ignore_watermark or time_min or time_max or entities or sent or tag):
        return None
    if (time_min or time_max) and not (ignore_watermark or sent):
        raise UsageError(
            "--time-min/time_min and --time-max/time_max re-export a window: also give"
            " --ignore-watermark/ignore_watermark (or a destination)"
        )
    if ignore_watermark and not (time_min and time_max):
        raise UsageError(
            "--ignore-watermark/ignore_watermark needs --time-min/time_min and --time-max/time_max:"
            " the window to re-export"
        )
    time_range(time_min, time_max)
    return ExportRequest(
        export_type=export_type,
        start=time_min,
        end=time_max,
        ignore_watermark=ignore_watermark,
        entities=tuple(entities),
        tag=tag,
        destination=destination,
    )


def check_kinds(tasks: Sequence[Any], given: bool, *, named: bool) -> None:
    """Refuse a run's request options (``given``) for a task that is not incremental (a task the
    run names, or every task of the run): such a run ignored them and exported as if they were
    not given. Checked before the options' own rules, whose advice (add --ignore-watermark to a
    window) would only lead here."""
    other = [t for t in tasks if t.kind != "incremental"]
    if given and other and (named or len(other) == len(tasks)):
        task = other[0]
        raise UsageError(
            "--type, --ignore-watermark, --time-min, --time-max, --entity, --destination and --tag apply"
            f" to incremental tasks only, and {validate.a_or_an(task.kind)} task {task.name!r} is not"
            " one; leave them out (`sluicegate reexport` re-exports a partitioned task's partitions)"
        )
