"""Reading the ``[time]`` and ``[capture]`` tables of a partitioned task's ``task.toml``."""

from __future__ import annotations

from typing import Any

from .. import validate
from ..exceptions import ConfigError
from ..specs import CaptureSpec, TimeSpec

TIME_KEYS = frozenset({"column", "grain", "name", "zone", "zone_sql", "settle", "boundary", "datetime_zone"})
CAPTURE_KEYS = frozenset({"mode", "table", "keys", "time", "cursor", "overlap", "triggers"})
# The [capture] keys only some modes use; under another mode each is refused, not ignored (a
# table without mode = "trigger", the default being "explicit", captured nothing).
MODES_OF = {
    "table": ("trigger", "scan"),
    "keys": ("trigger", "scan"),
    "time": ("trigger", "scan"),
    "triggers": ("trigger",),
    "cursor": ("scan",),
    "overlap": ("scan",),
}


def time_spec(raw: Any, where: str) -> TimeSpec:
    """A partitioned task's ``[time]`` table."""
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: use a table, e.g. [time] then column = "datetime"')
    validate.reject_unknown(raw, TIME_KEYS, where)
    if "column" not in raw:
        raise ConfigError(f"{where}: 'column' is missing; name the time column of select.sql's result")
    grain = raw.get("grain", "day")
    if grain not in ("day", "hour"):
        raise ConfigError(f"{where} grain: {grain!r} is not supported; use 'day' or 'hour'")
    boundary = raw.get("boundary", "start")
    if boundary not in ("start", "end"):
        raise ConfigError(
            f"{where} boundary: {boundary!r} is not valid; use 'start' for [start, end) "
            "or 'end' for OpenAQ's time-ending (start, end]"
        )
    zone, zone_sql = raw.get("zone"), raw.get("zone_sql")
    if zone and zone_sql:
        raise ConfigError(f"{where}: set either 'zone' (one IANA zone) or 'zone_sql', not both")
    return TimeSpec(
        column=validate.identifier(raw["column"], f"{where} column"),
        grain=grain,
        name=validate.identifier(raw.get("name", grain), f"{where} name"),
        zone=None if zone_sql else validate.zone_name(zone or "UTC", f"{where} zone"),
        zone_sql=str(zone_sql) if zone_sql else None,
        settle=validate.parse_duration(raw.get("settle", 0), where=f"{where} settle"),
        boundary=boundary,
        datetime_zone=(
            validate.zone_name(raw["datetime_zone"], f"{where} datetime_zone")
            if "datetime_zone" in raw
            else None
        ),
    )


def capture_spec(raw: Any, where: str, keys: tuple[str, ...], has_time: bool) -> CaptureSpec:
    """A partitioned task's ``[capture]`` table."""
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: use a table, e.g. [capture] then mode = "trigger"')
    validate.reject_unknown(raw, CAPTURE_KEYS, where)
    mode = validate.choice(raw.get("mode", "explicit"), ("trigger", "scan", "explicit"), f"{where} mode")
    triggers = validate.choice(raw.get("triggers", "statement"), ("statement", "row"), f"{where} triggers")
    _refuse_unused(raw, mode, where)
    if mode == "explicit":
        return CaptureSpec(mode="explicit")
    if not raw.get("table"):
        raise ConfigError(f"{where}: 'table' is missing; name the source table whose changes mark partitions")
    table = validate.table_name(raw["table"], f"{where} table")
    mapping = raw.get("keys", {k: k for k in keys})
    if not isinstance(mapping, dict) or set(mapping) != set(keys):
        raise ConfigError(
            f"{where} keys: map every partition key ({', '.join(keys) or 'none'}) to a column of {table}"
        )
    time_col, cursor = raw.get("time"), raw.get("cursor")
    if has_time and not time_col:
        raise ConfigError(f"{where}: 'time' is missing; name the column of {table} holding each row's time")
    if mode == "scan" and not cursor:
        raise ConfigError(
            f"{where}: scan mode needs 'cursor', a column such as ingested_at that grows on change"
        )
    return CaptureSpec(
        mode=mode,  # type: ignore[arg-type]
        table=table,
        keys={k: validate.identifier(v, f"{where} keys.{k}") for k, v in mapping.items()},
        time=validate.identifier(time_col, f"{where} time") if time_col else None,
        cursor=validate.identifier(cursor, f"{where} cursor") if cursor else None,
        overlap=validate.parse_duration(raw.get("overlap", "1h"), where=f"{where} overlap"),
        triggers=triggers,  # type: ignore[arg-type]
    )


def _refuse_unused(raw: dict[str, Any], mode: str, where: str) -> None:
    """ConfigError for a ``[capture]`` key that ``mode`` does not use."""
    for key, modes in MODES_OF.items():
        if key in raw and mode not in modes:
            wanted = " or ".join(f'"{m}"' for m in modes)
            default = ", the default, which captures nothing" if "mode" not in raw else ""
            raise ConfigError(
                f"{where} {key}: only for mode = {wanted} (this task's mode is {mode!r}{default});"
                f" remove {key}, or set mode = {wanted}"
            )
