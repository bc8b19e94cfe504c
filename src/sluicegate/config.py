"""Project and task configuration: read the files and the environment, once, at the edge.

A project is a folder with ``sluicegate.toml`` and ``tasks/<name>/{task.toml,select.sql}``.
:func:`load_project` reads it, applies environment overrides (``SLUICEGATE_SECTION__KEY``
and the OpenAQ exporter's names) and returns a frozen :class:`~sluicegate.specs.Project`.
Each task's ``task.toml`` is read by its kind's loader (``sluicegate.drivers.<kind>.load``).
Nothing below this module reads ``os.environ``: the environment is passed in as a mapping.

Unknown sections and keys are errors in both files, with the closest valid name.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import mariadb_conn, secrets, settings_env, validate
from .exceptions import ConfigError
from .masking import mask_url
from .settings_env import OVERRIDE_ENV_NAMES, OVERRIDE_ENV_PREFIXES, SETTINGS_KEYS
from .specs import (
    COLUMN_KINDS,
    FORMATS,
    MAX_UPLOADS_IN_FLIGHT,
    UPLOADS_IN_FLIGHT,
    CaptureSpec,
    DestinationSettings,
    Project,
    RowTask,
    ServiceSettings,
    Settings,
    TaskBase,
    TaskProblem,
    TaskSpec,
    TimeSpec,
)
from .validate import parse_duration

__all__ = [
    "COLUMN_KINDS",
    "FORMATS",
    "OVERRIDE_ENV_NAMES",
    "OVERRIDE_ENV_PREFIXES",
    "CaptureSpec",
    "DestinationSettings",
    "Project",
    "RowTask",
    "Settings",
    "TaskProblem",
    "TaskSpec",
    "TimeSpec",
    "dsl_folder",
    "load_project",
    "load_settings",
    "load_task",
    "mask_url",
    "parse_duration",
    "read_toml",
    "unwrap_copy",
    "with_format",
]


def read_toml(path: Path, missing: str | None = None) -> dict[str, Any]:
    """Parse a TOML file; ``missing`` is the advice when it does not exist."""
    try:
        return tomllib.loads(validate.text_file(path))
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; {missing or 'create it'}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc}); fix the syntax") from None


# The Common Knowledge data-export service's environment: (section, key, variable, default in
# DSL mode). Each fills a setting sluicegate.toml leaves unset.
DSL_DEFAULTS = (
    ("source", "url", "DATABASE_URL", None),
    ("destination", "url", "EXPORT_PATH", "/exported-data"),
)
DSL_DEFAULT_PATH = "/DSL/Export"


def dsl_folder(env: Mapping[str, str]) -> Path | None:
    """The Common Knowledge ``DSL/Export`` folder: ``DSL_PATH``, or the original's default when
    ``DATABASE_URL`` is set and that folder exists; None otherwise."""
    if env.get("DSL_PATH"):
        return Path(env["DSL_PATH"])
    default = Path(DSL_DEFAULT_PATH)
    return default if env.get("DATABASE_URL") and default.is_dir() else None


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")  # [defaults] log_level


def resolve_path(path: Path) -> Path:
    """``path`` made absolute, its symbolic links followed; a link that loops is a ConfigError.

    Python 3.11's ``Path.resolve`` raises RuntimeError ("Symlink loop from ...") for it.
    """
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:
        loop = getattr(exc, "filename", None) or str(exc).removeprefix("Symlink loop from ").strip("'")
        raise ConfigError(
            f"{loop} is a symbolic link that loops back to itself; point it at a real file or folder"
        ) from None


def _resolve_db_url(url: str, root: Path) -> str:
    """Make ``sqlite:///relative.db`` relative to the project folder."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return f"sqlite:///{resolve_path(root / url[len('sqlite:///') :])}"
    return url


def _resolve_dest_url(value: Any, root: Path, where: str) -> str:
    url = validate.destination_url(value, where)
    if "://" in url:
        return url
    try:  # "~/exports" was a folder named "~" in the project; ~nosuchuser raised a traceback
        path = Path(url).expanduser()
    except RuntimeError:
        raise ConfigError(f"{where} url: {url!r} names no home folder here; write its full path") from None
    return str(path if path.is_absolute() else resolve_path(root / path))


def _check_sections(raw: Mapping[str, Any], path: Path) -> None:
    validate.reject_unknown(raw, SETTINGS_KEYS, str(path), what="section")
    for section, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {section} must be a table ([{section}])")
        validate.reject_unknown(values, SETTINGS_KEYS[section], f"{path} [{section}]")


def load_settings(root: Path, env: Mapping[str, str]) -> Settings:
    """Read ``root/sluicegate.toml`` (or, without one, the DSL environment) and apply ``env``'s overrides.

    The Common Knowledge service's ``DATABASE_URL`` and ``EXPORT_PATH`` fill ``[source] url``
    and ``[destination] url`` when the file does not set them (defaults, not overrides).
    """
    path = root / "sluicegate.toml"
    if path.is_file():
        raw = read_toml(path)
        _check_sections(raw, path)
    elif dsl_folder(env) is not None:
        raw = {}
        if not env.get("DATABASE_URL"):
            raise ConfigError(
                "DSL_PATH is set but DATABASE_URL is not: set it to the PostgreSQL database the "
                "select.sql and delete.sql files run in, such as postgresql://exporter@db.example.org/openaq"
            )
    else:
        raise ConfigError(_no_project(root))
    _fill_dsl_defaults(raw, env, dsl_only=not path.is_file())
    for section, values in settings_env.overrides(env).items():
        raw.setdefault(section, {}).update(values)
    settings_env.require_s3_destination(env, raw)
    try:
        return _settings(raw, path, root, env)
    except ConfigError as exc:  # name the variable a bad value came from, not only the file
        for (section, key), name in settings_env.origins(env).items():
            if f"[{section}] {key}:" in str(exc):
                raise ConfigError(f"{exc} (the value comes from the environment variable {name})") from exc
        raise


def _no_project(root: Path) -> str:
    """Why ``root`` is not a project, and what to do; inside one, the way to the project."""
    if (root / "sluicegate.toml").is_dir():  # `init` would refuse: it "already exists"
        toml = root / "sluicegate.toml"
        return f"{toml} is a folder, not a file; remove it, then run 'sluicegate init {root}'"
    if root.is_dir():
        outer = next((p for p in root.resolve().parents if (p / "sluicegate.toml").is_file()), None)
        if outer is not None:  # tasks/openaq/ of a project: init there would nest a second one
            return (
                f"{root} holds no sluicegate.toml but is inside the project {outer}: run the command "
                f"there, or give the project with 'sluicegate -C {shlex.quote(str(outer))} ...'"
            )
    return (
        f"{root} {'holds no sluicegate.toml' if root.is_dir() else 'does not exist'} and DSL_PATH is not "
        f"set: run 'sluicegate init {root}' to "
        "create a project, or set DSL_PATH, DATABASE_URL and EXPORT_PATH to serve a Common Knowledge "
        "DSL/Export folder (see docs/service.md)"
    )


def _settings(raw: dict[str, Any], path: Path, root: Path, env: Mapping[str, str]) -> Settings:
    source = raw.get("source", {})
    if not source.get("url"):
        raise ConfigError(f"{path}: [source] url is missing; set it to sqlite:///file.db or postgresql://...")
    source_url = _resolve_db_url(str(source["url"]), root)
    ledger, dest = raw.get("ledger", {}), raw.get("destination", {})
    if not dest.get("url"):
        raise ConfigError(f"{path}: [destination] url is missing; set it to a folder or s3://bucket/prefix")
    defaults = raw.get("defaults", {})
    where, limit = f"{path} [defaults]", defaults.get("limit")
    return Settings(
        root=root,
        source_url=source_url,
        ledger_url=_resolve_db_url(str(ledger.get("url") or source_url), root),
        ledger_schema=validate.schema_name(ledger.get("schema", "sluicegate"), f"{path} [ledger] schema"),
        destination=_destination(dest, root, f"{path} [destination]"),
        format=validate.file_format(defaults.get("format", "csv.gz"), f"{where} format"),
        batch_size=validate.whole_number(defaults.get("batch_size", 500), f"{where} batch_size"),
        limit=None if limit in (None, "", 0, "0") else validate.whole_number(limit, f"{where} limit"),
        lease=validate.lease(defaults.get("lease", "10m"), f"{where} lease"),
        max_attempts=validate.whole_number(defaults.get("max_attempts", 5), f"{where} max_attempts"),
        workers=_workers(defaults.get("workers", "auto"), source_url, f"{where} workers"),
        backoff=parse_duration(defaults.get("backoff", "30s"), where=f"{where} backoff"),
        log_level=_log_level(defaults.get("log_level", "WARNING"), f"{where} log_level"),
        service=_service(raw.get("service", {}), f"{path} [service]"),
        fault=raw.get("testing", {}).get("fault") or None,
        fernet_key=secrets.fernet_key(env),
        fernet_key_name=secrets.fernet_key_name(env),
    )


def _log_level(value: Any, where: str) -> str:
    """A logging level's name, any case (``warn`` and ``fatal`` as Python's logging takes them)."""
    name = str(value).strip().upper()
    return validate.choice({"WARN": "WARNING", "FATAL": "CRITICAL"}.get(name, name), LOG_LEVELS, where)


def _workers(value: Any, source_url: str, where: str) -> int:
    """``[defaults] workers``; ``"auto"`` (the default) is 2 on a database server (PostgreSQL,
    MariaDB), 1 on SQLite.

    Measured (bench/README.md): a second exporter overlaps one's waits (the batch query, the
    syncs, the commit) with the other's encoding, 1.11-1.29x the location-days/s of one on two
    cores from PostgreSQL (bench/run.py) and 1.05-1.54x from MariaDB (bench/mariadb_export.py),
    for ~27 MiB more peak RSS (145 MiB). On the embedded SQLite source, read under the same GIL
    as the encoding, it gained nothing. One core: 1.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        in_process = source_url.startswith("sqlite:")  # read under the encoding's GIL
        return 2 if not in_process and (os.cpu_count() or 1) >= 2 else 1
    if isinstance(value, str) and not value.strip().isdigit():
        raise ConfigError(f'{where}: {value!r} is not a whole number; use one (exporters per run), or "auto"')
    return validate.whole_number(value, where, maximum=64)  # as run --workers: each is a process


def _fill_dsl_defaults(raw: dict[str, Any], env: Mapping[str, str], *, dsl_only: bool) -> None:
    """The Common Knowledge service's variables as defaults; without sluicegate.toml, its export
    folder stays as the original left it (no change feed unless the environment asks)."""
    for section, key, name, default in DSL_DEFAULTS:
        value = env.get(name) or (default if dsl_folder(env) is not None else None)
        if value and not raw.get(section, {}).get(key):
            raw.setdefault(section, {})[key] = value
    if dsl_only:
        raw.setdefault("destination", {}).setdefault("manifests", False)


def _service(raw: Mapping[str, Any], where: str) -> ServiceSettings:
    return ServiceSettings(
        public_metrics=validate.boolean(raw.get("public_metrics", False), f"{where} public_metrics"),
        max_request_bytes=validate.whole_number(
            raw.get("max_request_bytes", 64 * 1024), f"{where} max_request_bytes", 1024
        ),
    )


def _destination(dest: Mapping[str, Any], root: Path, where: str) -> DestinationSettings:
    return DestinationSettings(
        url=_resolve_dest_url(dest["url"], root, where),
        endpoint_url=validate.endpoint_url(dest.get("endpoint_url"), where),
        region=validate.region(dest.get("region"), where),
        access_key_id=validate.secret_text(dest.get("access_key_id"), f"{where} access_key_id"),
        secret_access_key=validate.secret_text(dest.get("secret_access_key"), f"{where} secret_access_key"),
        multipart_threshold=validate.whole_number(
            dest.get("multipart_threshold", 64 * 1024**2),
            f"{where} multipart_threshold",
            minimum=5 * 1024**2,
            maximum=5 * 1024**3,  # S3's largest part
        ),
        uploads_in_flight=_uploads_in_flight(
            dest.get("uploads_in_flight", UPLOADS_IN_FLIGHT), f"{where} uploads_in_flight"
        ),
        s3_client=_s3_client(dest.get("s3_client", "crt"), f"{where} s3_client"),
        sync=_sync(dest.get("sync", "auto"), f"{where} sync"),
        manifests=validate.boolean(dest.get("manifests", True), f"{where} manifests"),
    )


def _uploads_in_flight(value: Any, where: str) -> int:
    number = validate.whole_number(value, where)
    if number > MAX_UPLOADS_IN_FLIGHT:
        raise ConfigError(
            f"{where}: {number} is too many uploads at once; use at most {MAX_UPLOADS_IN_FLIGHT}"
        )
    return number


def _s3_client(value: Any, where: str) -> str:
    if value not in ("crt", "boto3"):
        raise ConfigError(f"{where}: {value!r} is not an S3 client; use crt or boto3")
    return str(value)


def _sync(value: Any, where: str) -> str:
    if value not in ("auto", "batch", "file"):
        raise ConfigError(f"{where}: {value!r} is not a sync mode; use auto, batch or file")
    return str(value)


def load_project(root: Path | str, env: Mapping[str, str] | None = None) -> Project:
    """Load the project in ``root``; broken task folders become :class:`TaskProblem` entries.

    Tasks are the folders of ``root/tasks``, or of ``DSL_PATH`` when it is set (a Common
    Knowledge ``DSL/Export`` folder, where a folder with ``select.sql`` and ``delete.sql`` and no
    ``task.toml`` is an archive task with the original service's behaviour).
    """
    root = resolve_path(Path(root))
    env = env or {}
    settings = load_settings(root, env)
    dsl = dsl_folder(env)
    tasks_dir = dsl if dsl is not None else root / "tasks"
    if dsl is not None and not dsl.is_dir():
        raise ConfigError(
            f"DSL_PATH={str(dsl)!r} is not a folder; point it at the DSL/Export folder of task folders"
        )
    tasks: dict[str, TaskBase] = {}
    problems: list[TaskProblem] = []
    found = tasks_dir.iterdir() if tasks_dir.is_dir() else ()  # not .hidden, nor Python's __pycache__
    folders = sorted(p for p in found if p.is_dir() and not p.name.startswith((".", "__pycache__")))
    for folder in folders:
        try:
            task = load_task(folder, settings, dsl=dsl is not None)
        except ConfigError as exc:
            problems.append(TaskProblem(name=folder.name, folder=folder, message=str(exc)))
        else:
            tasks[task.name] = task
    for name, message in _shared_tables(tasks).items():
        problems.append(TaskProblem(name=name, folder=tasks.pop(name).folder, message=message))
    return Project(settings=settings, tasks=tasks, problems=tuple(problems))


def _shared_tables(tasks: Mapping[str, TaskBase]) -> dict[str, str]:
    """Aggregate tasks that write one table where either replaces its rows, with the problem."""
    from .drivers.aggregate import Task as AggregateTask
    from .drivers.aggregate_check import shared_tables

    return shared_tables([t for t in tasks.values() if isinstance(t, AggregateTask)])


_COPY_WRAPPER = re.compile(r"^\s*COPY\s*\((?P<query>.*)\)\s*TO\s+STDOUT\b.*$", re.IGNORECASE | re.DOTALL)


def unwrap_copy(sql_text: str) -> str:
    """Accept the Common Knowledge layout: ``COPY (SELECT ...) TO stdout WITH csv HEADER``."""
    match = _COPY_WRAPPER.match(sql_text.strip().rstrip(";"))
    return match.group("query").strip() if match else sql_text


def read_select(folder: Path) -> str:
    """The task's ``select.sql`` (a COPY wrapper removed), ending with a newline."""
    select_path = folder / "select.sql"
    if not select_path.is_file():
        raise ConfigError(f"{select_path} not found; every task folder needs a select.sql")
    select_sql = unwrap_copy(validate.statement(validate.text_file(select_path)))
    if not select_sql or all(line.strip().startswith("--") for line in select_sql.splitlines()):
        raise ConfigError(f"{select_path} is empty; write the SELECT whose rows this task exports")
    return select_sql + "\n"  # a trailing "-- comment" must not swallow our closing parenthesis


def load_task(folder: Path, settings: Settings, *, dsl: bool = False) -> TaskBase:
    """Load one task folder with its kind's loader; raise ConfigError naming the file and field.

    With ``dsl`` (a Common Knowledge ``DSL/Export`` folder), a folder without ``task.toml`` is an
    archive task when it holds ``select.sql`` and ``delete.sql``.
    """
    from .drivers import KINDS, kind_module

    name = folder.name
    if not validate.TASK_NAME.match(name):
        raise ConfigError(f"{folder}: task folder name {name!r}: {validate.TASK_NAME_RULE}")
    toml_path = folder / "task.toml"
    if dsl and not toml_path.exists():
        missing = [f for f in ("select.sql", "delete.sql") if not (folder / f).is_file()]
        if missing:
            raise ConfigError(
                f"{folder}: a DSL export folder needs select.sql and delete.sql; {missing[0]} is missing"
            )
        raw: dict[str, Any] = {"kind": "archive"}
    else:
        raw = read_toml(toml_path, "every task folder needs a task.toml (see docs/tasks.md)")
    kind = raw.get("kind", "partitioned")
    if kind not in KINDS:
        raise ConfigError(f"{toml_path} kind: {kind!r} is not supported; use one of {', '.join(KINDS)}")
    task: TaskBase = kind_module(kind).load(name=name, folder=folder, raw=raw, settings=settings)
    _check_mariadb_task(task, toml_path, settings)
    return task


# What runs on a MariaDB/MySQL source so far (docs/concepts.md, "MariaDB and MySQL").
MARIADB_KINDS = ("partitioned", "incremental", "aggregate", "ingest", "archive")
MARIADB_CAPTURE = ("trigger", "scan", "explicit")
# The kinds whose stores a MariaDB ledger has.
MARIADB_LEDGER_KINDS = ("partitioned", "incremental", "blocks", "aggregate", "ingest", "archive")


def _check_mariadb_task(task: TaskBase, toml_path: Path, settings: Settings) -> None:
    """ConfigError for a task a MariaDB/MySQL source or ledger cannot run yet."""
    see = "(see docs/concepts.md, MariaDB and MySQL)"
    if mariadb_conn.is_url(settings.ledger_url) and task.kind not in MARIADB_LEDGER_KINDS:
        raise ConfigError(
            f"{toml_path} kind: {task.kind!r} tasks cannot keep their ledger on MariaDB/MySQL yet; set "
            f"[ledger] url to postgresql://... or sqlite:///ledger.db {see}"
        )
    if not mariadb_conn.is_url(settings.source_url):
        if getattr(getattr(task, "time", None), "datetime_zone", None):
            raise ConfigError(
                f"{toml_path} [time] datetime_zone: applies to DATETIME columns of MariaDB/MySQL sources only"
                "; remove it (store times with an offset: timestamptz, or on SQLite text with Z or ±HH:MM)"
            )
        return
    later = f"is not supported on MariaDB/MySQL sources yet {see}"
    if task.kind not in MARIADB_KINDS:
        raise ConfigError(f"{toml_path} kind: {task.kind!r} {later}; supported: {', '.join(MARIADB_KINDS)}")
    mode = getattr(getattr(task, "capture", None), "mode", "explicit")
    if mode not in MARIADB_CAPTURE:
        raise ConfigError(
            f"{toml_path} [capture] mode: {mode!r} {later}; use one of {', '.join(MARIADB_CAPTURE)}"
        )


def with_format(task: TaskBase, fmt: str) -> TaskBase:
    """Return ``task`` exporting to ``fmt`` instead (used by benchmarks and tests)."""
    return dataclasses.replace(task, format=validate.file_format(fmt, "format"))
