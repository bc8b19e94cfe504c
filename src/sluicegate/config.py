"""Project and task configuration: frozen objects built once, at the edge.

A project is a folder with ``sluicegate.toml`` and ``tasks/<name>/{task.toml,select.sql}``.
:func:`load_project` reads it, applies environment overrides (``SLUICEGATE_SECTION__KEY``
and the OpenAQ exporter's names) and returns a :class:`Project`. Nothing below this module
reads ``os.environ``: the environment is passed in as a mapping.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import tomllib
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from .exceptions import ConfigError
from .masking import mask_url

FORMATS = ("csv", "csv.gz", "parquet")
Grain = Literal["day", "hour"]
Boundary = Literal["start", "end"]
CaptureMode = Literal["trigger", "scan", "explicit"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def parse_duration(value: str | int | float, *, where: str) -> float:
    """Return seconds for ``value`` such as ``"90s"``, ``"14m"``, ``"72h"`` or ``3600``.

    ``where`` names the setting in the error message.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{where}: duration {value!r} is negative; use a value such as '30s' or '72h'")
        return float(value)
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
    return total


@dataclass(frozen=True, kw_only=True)
class DestinationSettings:
    """Where files go: a folder, ``file://``, ``s3://bucket/prefix`` or another fsspec URL."""

    url: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    multipart_threshold: int = 64 * 1024 * 1024
    # Local folders: "batch" (one syncfs before and one after a group's renames; Linux),
    # "file" (fsync each file and folder), or "auto" (batch where syncfs exists).
    sync: str = "auto"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Project-wide settings from ``sluicegate.toml`` plus environment overrides."""

    root: Path
    source_url: str = field(repr=False)
    ledger_url: str = field(repr=False)
    ledger_schema: str = "sluicegate"
    destination: DestinationSettings
    format: str = "csv.gz"
    batch_size: int = 500
    limit: int | None = None
    lease: float = 600.0
    max_attempts: int = 5
    workers: int = 1  # exporters per run, each with its own claims and connections
    backoff: float = 30.0
    log_level: str = "WARNING"
    fault: str | None = None  # [testing] fault: a named point where a test SIGKILLs the worker

    @property
    def source_display(self) -> str:
        """The source URL with its password masked."""
        return mask_url(self.source_url)

    @property
    def ledger_display(self) -> str:
        """The ledger URL with its password masked."""
        return mask_url(self.ledger_url)


@dataclass(frozen=True, kw_only=True)
class TimeSpec:
    """The time key of a partitioned task."""

    column: str
    grain: Grain = "day"
    name: str = "day"
    zone: str | None = "UTC"
    zone_sql: str | None = None
    settle: float = 0.0
    boundary: Boundary = "start"


@dataclass(frozen=True, kw_only=True)
class CaptureSpec:
    """How changed source rows are mapped to partitions."""

    mode: CaptureMode = "explicit"
    table: str | None = None
    keys: Mapping[str, str] = field(default_factory=dict)
    time: str | None = None
    cursor: str | None = None
    overlap: float = 3600.0


ExportType = Literal["daily", "hourly", "instant"]
EXPORT_TYPES = ("daily", "hourly", "instant")


@dataclass(frozen=True, kw_only=True)
class IncrementalSpec:
    """Watermark exports per entity: what is new since the last durable export."""

    entity: str
    cursor: str
    export_type: ExportType = "daily"
    zone: str = "UTC"
    bootstrap: str = "yesterday"
    safety_margin: float = 60.0
    entities: tuple[str, ...] = ()


ARCHIVE_PATH = "{task}-{boundary:%Y_%m_%d-%I_%M_%S_%p}.{ext}"


@dataclass(frozen=True, kw_only=True)
class ArchiveSpec:
    """Export-then-delete (or a plain snapshot when there is no delete.sql), one file per run."""

    delete_sql: str | None
    zone: str = "UTC"
    boundary: Literal["midnight", "now"] = "midnight"


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """One task folder: what to select, how to partition it, where to write it."""

    name: str
    folder: Path
    kind: str
    select_sql: str
    format: str
    path: str
    keys: tuple[str, ...]
    time: TimeSpec | None
    capture: CaptureSpec
    batch_size: int
    order_by: tuple[str, ...] = ()
    primary_key: tuple[str, ...] = ()
    description: str = ""
    incremental: IncrementalSpec | None = None
    archive: ArchiveSpec | None = None
    schedule: str | None = None
    schedule_zone: str = "UTC"
    columns: tuple[tuple[str, str], ...] = ()  # [columns]: (name, kind) pins, SQLite sources only

    @property
    def key_names(self) -> tuple[str, ...]:
        """All partition key names, the time key last."""
        return (*self.keys, self.time.name) if self.time else self.keys

    @property
    def extension(self) -> str:
        """The file extension for this task's format."""
        return self.format


@dataclass(frozen=True, kw_only=True)
class TaskProblem:
    """A task folder that could not be loaded; reported, never fatal for the others."""

    name: str
    folder: Path
    message: str


@dataclass(frozen=True, kw_only=True)
class Project:
    """A loaded project: settings, the tasks that loaded, and those that did not."""

    settings: Settings
    tasks: Mapping[str, TaskSpec]
    problems: tuple[TaskProblem, ...] = ()

    def task(self, name: str) -> TaskSpec:
        """Return the task called ``name`` or raise a ConfigError naming the known tasks."""
        if name in self.tasks:
            return self.tasks[name]
        for problem in self.problems:
            if problem.name == name:
                raise ConfigError(problem.message)
        known = ", ".join(sorted(self.tasks)) or "none"
        raise ConfigError(f"no task named {name!r} in {self.settings.root / 'tasks'}; known tasks: {known}")

    def select(self, names: tuple[str, ...] | list[str]) -> list[TaskSpec]:
        """Return the named tasks (all tasks when ``names`` is empty)."""
        if not names:
            return [self.tasks[n] for n in sorted(self.tasks)]
        return [self.task(n) for n in names]


# ---------------------------------------------------------------------------- loading


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; run 'sluicegate init' to create a project") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc}); fix the syntax") from None


# Every environment variable that overrides sluicegate.toml (see _env_overrides): the OpenAQ
# exporter's names, and the prefixes of SLUICEGATE_SECTION__KEY and DATABASE_*.
OVERRIDE_ENV_NAMES = (
    "LIMIT",
    "WRITE_FILE_LOCATION",
    "WRITE_FILE_FORMAT",
    "OPEN_DATA_BUCKET",
    "LOCAL_SAVE_DIRECTORY",
    "LOG_LEVEL",
)
OVERRIDE_ENV_PREFIXES = ("SLUICEGATE_", "DATABASE_")


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Collect overrides: OpenAQ exporter names first, then ``SLUICEGATE_SECTION__KEY`` on top."""
    out: dict[str, dict[str, str]] = {}

    def put(section: str, key: str, value: str) -> None:
        out.setdefault(section, {})[key] = value

    # The OpenAQ exporter's environment, so its users can switch without renaming.
    if "LIMIT" in env:
        put("defaults", "limit", env["LIMIT"])
    if "WRITE_FILE_FORMAT" in env:
        put("defaults", "format", env["WRITE_FILE_FORMAT"])
    if "LOG_LEVEL" in env:
        put("defaults", "log_level", env["LOG_LEVEL"])
    location = env.get("WRITE_FILE_LOCATION")
    if location == "s3" and env.get("OPEN_DATA_BUCKET"):
        put("destination", "url", f"s3://{env['OPEN_DATA_BUCKET']}")
    elif location == "local" or (location is None and "LOCAL_SAVE_DIRECTORY" in env):
        put("destination", "url", env.get("LOCAL_SAVE_DIRECTORY") or ".")
    elif location is not None and location not in ("s3", "local"):
        raise ConfigError(f"WRITE_FILE_LOCATION={location!r} is not a valid location; use 's3' or 'local'")
    for role, section in (("READ", "source"), ("WRITE", "ledger")):
        url = env.get(f"DATABASE_{role}_URL") or _openaq_db_url(env, role)
        if url:
            put(section, "url", url)
    for name, value in env.items():
        if not name.startswith("SLUICEGATE_") or "__" not in name:
            continue
        section, _, key = name[len("SLUICEGATE_") :].partition("__")
        put(section.lower(), key.lower(), value)
    return out


def _openaq_db_url(env: Mapping[str, str], role: str) -> str | None:
    host, db = env.get("DATABASE_HOST"), env.get("DATABASE_DB")
    if not host or not db:
        return None
    user = quote(env.get(f"DATABASE_{role}_USER", ""), safe="")
    password = env.get(f"DATABASE_{role}_PASSWORD")
    auth = f"{user}:{quote(password, safe='')}@" if password else (f"{user}@" if user else "")
    return f"postgresql://{auth}{host}:{env.get('DATABASE_PORT', '5432')}/{db}"


def _resolve_db_url(url: str, root: Path) -> str:
    """Make ``sqlite:///relative.db`` relative to the project folder."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{(root / url[len('sqlite:///') :]).resolve()}"
    return url


def _resolve_dest_url(url: str, root: Path) -> str:
    if "://" in url:
        return url
    path = Path(url)
    return str(path if path.is_absolute() else (root / path).resolve())


def _check_sync(value: Any, where: str) -> str:
    if value not in ("auto", "batch", "file"):
        raise ConfigError(f"{where} = {value!r} is not a sync mode; use auto, batch or file")
    return str(value)


def _as_int(value: Any, where: str, minimum: int = 1) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a whole number") from None
    if number < minimum:
        raise ConfigError(f"{where}: {number} is too small; use at least {minimum}")
    return number


def _schema_name(value: Any, where: str) -> str:
    """The ledger schema: a plain SQL identifier, since it is spliced into every ledger statement."""
    if not isinstance(value, str) or not _NAME.match(value) or len(value) > 63:
        raise ConfigError(
            f"{where}: {value!r} is not a plain identifier; use letters, digits and underscores, "
            "not starting with a digit, at most 63 characters (e.g. 'sluicegate')"
        )
    return value


def _check_format(value: Any, where: str) -> str:
    if value not in FORMATS:
        raise ConfigError(f"{where}: format {value!r} is not supported; use one of {', '.join(FORMATS)}")
    return str(value)


def load_settings(root: Path, env: Mapping[str, str]) -> Settings:
    """Read ``root/sluicegate.toml`` and apply the environment overrides in ``env``."""
    path = root / "sluicegate.toml"
    raw = _read_toml(path)
    for section, values in _env_overrides(env).items():
        raw.setdefault(section, {}).update(values)
    source = raw.get("source", {})
    if not source.get("url"):
        raise ConfigError(f"{path}: [source] url is missing; set it to sqlite:///file.db or postgresql://...")
    source_url = _resolve_db_url(str(source["url"]), root)
    ledger = raw.get("ledger", {})
    ledger_url = _resolve_db_url(str(ledger.get("url") or source_url), root)
    dest = raw.get("destination", {})
    if not dest.get("url"):
        raise ConfigError(f"{path}: [destination] url is missing; set it to a folder or s3://bucket/prefix")
    defaults = raw.get("defaults", {})
    where = f"{path} [defaults]"
    limit = defaults.get("limit")
    return Settings(
        root=root,
        source_url=source_url,
        ledger_url=ledger_url,
        ledger_schema=_schema_name(ledger.get("schema", "sluicegate"), f"{path} [ledger] schema"),
        destination=DestinationSettings(
            url=_resolve_dest_url(str(dest["url"]), root),
            endpoint_url=dest.get("endpoint_url") or None,
            region=dest.get("region") or None,
            access_key_id=dest.get("access_key_id") or None,
            secret_access_key=dest.get("secret_access_key") or None,
            multipart_threshold=_as_int(
                dest.get("multipart_threshold", 64 * 1024 * 1024),
                f"{path} [destination] multipart_threshold",
                minimum=5 * 1024 * 1024,
            ),
            sync=_check_sync(dest.get("sync", "auto"), f"{path} [destination] sync"),
        ),
        format=_check_format(defaults.get("format", "csv.gz"), f"{where} format"),
        batch_size=_as_int(defaults.get("batch_size", 500), f"{where} batch_size"),
        limit=None if limit in (None, "", 0, "0") else _as_int(limit, f"{where} limit"),
        lease=parse_duration(defaults.get("lease", "10m"), where=f"{where} lease"),
        max_attempts=_as_int(defaults.get("max_attempts", 5), f"{where} max_attempts"),
        workers=_as_int(defaults.get("workers", 1), f"{where} workers"),
        backoff=parse_duration(defaults.get("backoff", "30s"), where=f"{where} backoff"),
        log_level=str(defaults.get("log_level", "WARNING")).upper(),
        fault=raw.get("testing", {}).get("fault") or None,
    )


def load_project(root: Path | str, env: Mapping[str, str] | None = None) -> Project:
    """Load the project in ``root``; broken task folders become :class:`TaskProblem` entries."""
    root = Path(root).resolve()
    settings = load_settings(root, env or {})
    tasks: dict[str, TaskSpec] = {}
    problems: list[TaskProblem] = []
    tasks_dir = root / "tasks"
    for folder in sorted(p for p in tasks_dir.iterdir() if p.is_dir()) if tasks_dir.is_dir() else []:
        try:
            task = load_task(folder, settings)
        except ConfigError as exc:
            problems.append(TaskProblem(name=folder.name, folder=folder, message=str(exc)))
        else:
            tasks[task.name] = task
    return Project(settings=settings, tasks=tasks, problems=tuple(problems))


def _identifier(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(f"{where}: {value!r} is not a column name; use letters, digits and underscores")
    return value


def _time_spec(raw: Mapping[str, Any], where: str) -> TimeSpec:
    known = {"column", "grain", "name", "zone", "zone_sql", "settle", "boundary"}
    _reject_unknown(raw, known, where)
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
    zone = raw.get("zone")
    zone_sql = raw.get("zone_sql")
    if zone and zone_sql:
        raise ConfigError(f"{where}: set either 'zone' (one IANA zone) or 'zone_sql', not both")
    if zone:
        try:
            zoneinfo.ZoneInfo(str(zone))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"{where} zone: {zone!r} is not an IANA time zone; use a name such as 'Europe/Brussels'"
            ) from None
    return TimeSpec(
        column=_identifier(raw["column"], f"{where} column"),
        grain=grain,
        name=_identifier(raw.get("name", grain), f"{where} name"),
        zone=None if zone_sql else str(zone or "UTC"),
        zone_sql=str(zone_sql) if zone_sql else None,
        settle=parse_duration(raw.get("settle", 0), where=f"{where} settle"),
        boundary=boundary,
    )


def _capture_spec(raw: Mapping[str, Any], where: str, keys: tuple[str, ...], has_time: bool) -> CaptureSpec:
    _reject_unknown(raw, {"mode", "table", "keys", "time", "cursor", "overlap"}, where)
    mode = raw.get("mode", "explicit")
    if mode not in ("trigger", "scan", "explicit"):
        raise ConfigError(f"{where} mode: {mode!r} is not valid; use 'trigger', 'scan' or 'explicit'")
    if mode == "explicit":
        return CaptureSpec(mode="explicit")
    if not raw.get("table"):
        raise ConfigError(f"{where}: 'table' is missing; name the source table whose changes mark partitions")
    table = str(raw["table"])
    if not all(_NAME.match(part) for part in table.split(".")):
        raise ConfigError(f"{where} table: {table!r} is not a table name")
    mapping = raw.get("keys", {k: k for k in keys})
    if not isinstance(mapping, dict) or set(mapping) != set(keys):
        raise ConfigError(
            f"{where} keys: map every partition key ({', '.join(keys) or 'none'}) to a column of {table}"
        )
    cols = {k: _identifier(v, f"{where} keys.{k}") for k, v in mapping.items()}
    time_col = raw.get("time")
    if has_time and not time_col:
        raise ConfigError(f"{where}: 'time' is missing; name the column of {table} holding each row's time")
    cursor = raw.get("cursor")
    if mode == "scan" and not cursor:
        raise ConfigError(
            f"{where}: scan mode needs 'cursor', a column such as ingested_at that grows on change"
        )
    return CaptureSpec(
        mode=mode,
        table=table,
        keys=cols,
        time=_identifier(time_col, f"{where} time") if time_col else None,
        cursor=_identifier(cursor, f"{where} cursor") if cursor else None,
        overlap=parse_duration(raw.get("overlap", "1h"), where=f"{where} overlap"),
    )


def _reject_unknown(raw: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting {unknown[0]!r}; known settings: {', '.join(sorted(known))}"
        )


_SCHEDULE_KEYS = {"schedule", "schedule_zone"}
_TASK_KEYS = {
    "kind",
    "description",
    "format",
    "path",
    "keys",
    "time",
    "capture",
    "batch_size",
    "order_by",
    "primary_key",
    "columns",
} | _SCHEDULE_KEYS
_INCREMENTAL_KEYS = {
    "kind",
    "description",
    "format",
    "path",
    "batch_size",
    "order_by",
    "primary_key",
    "entity",
    "cursor",
    "export_type",
    "zone",
    "bootstrap",
    "safety_margin",
    "entities",
    "columns",
} | _SCHEDULE_KEYS

# The kinds a [columns] entry may pin (sources.ColumnKind, without the internal "other").
COLUMN_KINDS = ("int", "float", "decimal", "text", "timestamptz", "timestamp", "date", "bool", "binary")


def _columns_spec(raw: Any, where: str, time: TimeSpec | None) -> tuple[tuple[str, str], ...]:
    """``[columns]``: a column kind per result column name, checked against the known kinds."""
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: use a table of column kinds, e.g. [columns] then value = "float"')
    kinds = ", ".join(COLUMN_KINDS)
    pins = []
    for name, kind in raw.items():
        _identifier(name, where)
        if kind not in COLUMN_KINDS:
            raise ConfigError(f"{where} {name}: {kind!r} is not a column kind; use one of {kinds}")
        if time is not None and name == time.column and kind != "timestamptz":
            raise ConfigError(
                f'{where} {name}: the [time] column is always timestamptz; remove it or set "timestamptz"'
            )
        pins.append((str(name), str(kind)))
    return tuple(pins)


def _check_bootstrap(value: Any, where: str) -> str:
    text = str(value)
    if text in ("yesterday", "beginning"):
        return text
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{where}: {text!r} is not a bootstrap; use 'yesterday', 'beginning' or an ISO 8601 time"
        ) from None
    return parsed.isoformat()


def _incremental_spec(raw: Mapping[str, Any], where: str) -> IncrementalSpec:
    _reject_unknown(raw, _INCREMENTAL_KEYS, where)
    for field_name in ("entity", "cursor"):
        if field_name not in raw:
            raise ConfigError(
                f"{where}: '{field_name}' is missing; name the {field_name} column of select.sql's result"
            )
    export_type = raw.get("export_type", "daily")
    if export_type not in EXPORT_TYPES:
        raise ConfigError(f"{where} export_type: {export_type!r} is not valid; use daily, hourly or instant")
    zone = str(raw.get("zone", "UTC"))
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where} zone: {zone!r} is not an IANA time zone") from None
    entities = raw.get("entities", [])
    if not isinstance(entities, list) or not all(isinstance(e, str | int) for e in entities):
        raise ConfigError(f'{where} entities: use a list of entity values, e.g. entities = ["study-a"]')
    return IncrementalSpec(
        entity=_identifier(raw["entity"], f"{where} entity"),
        cursor=_identifier(raw["cursor"], f"{where} cursor"),
        export_type=export_type,
        zone=zone,
        bootstrap=_check_bootstrap(raw.get("bootstrap", "yesterday"), f"{where} bootstrap"),
        safety_margin=parse_duration(raw.get("safety_margin", "1m"), where=f"{where} safety_margin"),
        entities=tuple(str(e) for e in entities),
    )


_ARCHIVE_KEYS = {"kind", "description", "format", "path", "zone", "boundary"} | _SCHEDULE_KEYS


def _schedule(raw: Mapping[str, Any], where: str) -> tuple[str | None, str]:
    schedule = raw.get("schedule")
    zone = str(raw.get("schedule_zone", "UTC"))
    if schedule is None:
        return None, zone
    from croniter import croniter

    if not isinstance(schedule, str) or not croniter.is_valid(schedule):
        raise ConfigError(f"{where} schedule: {schedule!r} is not a cron expression such as '*/5 * * * *'")
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where} schedule_zone: {zone!r} is not an IANA time zone") from None
    return schedule, zone


_COPY_WRAPPER = re.compile(r"^\s*COPY\s*\((?P<query>.*)\)\s*TO\s+STDOUT\b.*$", re.IGNORECASE | re.DOTALL)


def unwrap_copy(sql_text: str) -> str:
    """Accept the Common Knowledge layout: ``COPY (SELECT ...) TO stdout WITH csv HEADER``."""
    match = _COPY_WRAPPER.match(sql_text.strip().rstrip(";"))
    return match.group("query").strip() if match else sql_text


def _archive_spec(raw: Mapping[str, Any], folder: Path, where: str) -> ArchiveSpec:
    _reject_unknown(raw, _ARCHIVE_KEYS, where)
    zone = str(raw.get("zone", "UTC"))
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where} zone: {zone!r} is not an IANA time zone") from None
    boundary = raw.get("boundary", "midnight")
    if boundary not in ("midnight", "now"):
        raise ConfigError(
            f"{where} boundary: {boundary!r} is not valid; use 'midnight' (today, in zone) or 'now'"
        )
    delete_path = folder / "delete.sql"
    delete_sql = (
        delete_path.read_text(encoding="utf-8").strip().rstrip(";").strip() if delete_path.is_file() else None
    )
    if delete_sql is not None and not delete_sql:
        raise ConfigError(f"{delete_path} is empty; remove it for a snapshot export or write the DELETE")
    return ArchiveSpec(delete_sql=delete_sql, zone=zone, boundary=boundary)


def load_task(folder: Path, settings: Settings) -> TaskSpec:
    """Load one task folder; raise ConfigError naming the file and field on any problem."""
    name = folder.name
    if not TASK_NAME.match(name):
        raise ConfigError(f"{folder}: task folder name {name!r} must start with a letter or digit")
    toml_path = folder / "task.toml"
    raw = _read_toml(toml_path)
    where = str(toml_path)
    kind = raw.get("kind", "partitioned")
    if kind not in ("partitioned", "incremental", "archive"):
        raise ConfigError(
            f"{where} kind: {kind!r} is not supported; use 'partitioned', 'incremental' or 'archive'"
        )
    incremental = _incremental_spec(raw, where) if kind == "incremental" else None
    archive = _archive_spec(raw, folder, where) if kind == "archive" else None
    if kind == "partitioned":
        _reject_unknown(raw, _TASK_KEYS, where)
    select_path = folder / "select.sql"
    if not select_path.is_file():
        raise ConfigError(f"{select_path} not found; every task folder needs a select.sql")
    select_sql = unwrap_copy(select_path.read_text(encoding="utf-8").strip().rstrip(";").strip())
    if not select_sql or all(line.strip().startswith("--") for line in select_sql.splitlines()):
        raise ConfigError(f"{select_path} is empty; write the SELECT whose rows this task exports")
    keys_raw = raw.get("keys", [])
    if not isinstance(keys_raw, list):
        raise ConfigError(f'{where} keys: use a list of column names, e.g. keys = ["location_id"]')
    keys = tuple(_identifier(k, f"{where} keys") for k in keys_raw)
    time = _time_spec(raw["time"], f"{where} [time]") if "time" in raw else None
    if incremental is not None:
        # Read path: one "partition" per entity whose window is [watermark, end) on the cursor.
        keys = (incremental.entity,)
        time = TimeSpec(column=incremental.cursor, name="start", zone=incremental.zone)
    if time and time.name in keys:
        raise ConfigError(f"{where} [time] name: {time.name!r} is also a partition key; pick another name")
    if time and time.zone_sql is None and time.zone is None:
        raise ConfigError(f"{where} [time]: set 'zone' or 'zone_sql'")
    if not keys and time is None and archive is None:
        raise ConfigError(f"{where}: a partitioned task needs 'keys', a [time] table, or both")
    path = raw.get("path", ARCHIVE_PATH if archive else None)
    schedule, schedule_zone = _schedule(raw, where)
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(
            f'{where} path: missing; give a template such as "{{location_id}}/{{day:%Y%m%d}}.{{ext}}"'
        )
    order_by = raw.get("order_by", [])
    if not isinstance(order_by, list):
        raise ConfigError(f"{where} order_by: use a list of column names")
    primary_key = raw.get("primary_key", [])
    if not isinstance(primary_key, list):
        raise ConfigError(f'{where} primary_key: use a list of column names, e.g. ["sensors_id", "datetime"]')
    task = TaskSpec(
        name=name,
        folder=folder,
        kind=kind,
        select_sql=select_sql + "\n",  # a trailing "-- comment" must not swallow our closing parenthesis
        format=_check_format(raw.get("format", "csv.gz" if archive else settings.format), f"{where} format"),
        path=path,
        keys=keys,
        time=time,
        capture=_capture_spec(raw.get("capture", {}), f"{where} [capture]", keys, time is not None),
        batch_size=_as_int(raw.get("batch_size", settings.batch_size), f"{where} batch_size"),
        order_by=tuple(_identifier(c, f"{where} order_by") for c in order_by),
        primary_key=tuple(_identifier(c, f"{where} primary_key") for c in primary_key),
        description=str(raw.get("description", "")),
        incremental=incremental,
        archive=archive,
        schedule=schedule,
        schedule_zone=schedule_zone,
        columns=_columns_spec(raw.get("columns", {}), f"{where} [columns]", time),
    )
    from .partitions import check_template  # local import: partitions imports config types

    check_template(task)
    return task


def with_format(task: TaskSpec, fmt: str) -> TaskSpec:
    """Return ``task`` exporting to ``fmt`` instead (used by benchmarks and tests)."""
    return dataclasses.replace(task, format=_check_format(fmt, "format"))
