"""The frozen configuration objects every layer receives: settings, tasks, the project.

They are built once, at the edge (:mod:`sluicegate.config` reads the files and the
environment), and passed inward. Nothing here reads files or the environment.

A task's spec is a class per kind, each a subclass of :class:`TaskBase` defined by its
driver module (``sluicegate.drivers.<kind>``): a kind carries only its own fields. What the
kinds share is here: :class:`TaskBase`, :class:`RowTask` (tasks read in batches of units) and
the time and capture parts of partitioned tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from .db import same_database
from .exceptions import ConfigError
from .masking import mask_url

FORMATS = ("csv", "csv.gz", "parquet", "jsonl")
Grain = Literal["day", "hour"]
Boundary = Literal["start", "end"]
CaptureMode = Literal["trigger", "scan", "explicit"]
# The kinds a [columns] entry may pin (sources.ColumnKind, without the internal "other").
COLUMN_KINDS = ("int", "float", "decimal", "text", "timestamptz", "timestamp", "date", "bool", "binary")


UPLOADS_IN_FLIGHT = 64  # default [destination] uploads_in_flight
MAX_UPLOADS_IN_FLIGHT = 1024


@dataclass(frozen=True, kw_only=True)
class DestinationSettings:
    """Where files go: a folder, ``file://``, ``s3://bucket/prefix`` or another fsspec URL."""

    url: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    multipart_threshold: int = 64 * 1024 * 1024
    # Object stores (s3://): uploads kept in flight per exporter. Remote S3 answers a PUT in
    # tens of milliseconds, so throughput is uploads in flight / latency.
    uploads_in_flight: int = UPLOADS_IN_FLIGHT
    # s3://: "crt" sends small PUTs through the AWS Common Runtime (C, off the GIL), "boto3"
    # sends every request through botocore.
    s3_client: str = "crt"
    # Local folders: "batch" (one syncfs before and one after a group's renames; Linux),
    # "file" (fsync each file and folder), or "auto" (batch where syncfs exists).
    sync: str = "auto"
    # The change feed: a manifest under _manifests/ per placed group of files (see changes.py).
    manifests: bool = True


@dataclass(frozen=True, kw_only=True)
class ServiceSettings:
    """``[service]``: what ``sluicegate serve`` lets through."""

    public_metrics: bool = False  # /metrics without a token (for Prometheus scrapers)
    max_request_bytes: int = 64 * 1024  # larger request bodies get 413


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
    service: ServiceSettings = field(default_factory=ServiceSettings)
    fault: str | None = None  # [testing] fault: a named point where a test SIGKILLs the worker
    # The Fernet key of encrypted configuration values and artifacts (SLUICEGATE_FERNET_KEY,
    # or ATD_MDS_FERNET_KEY), and the variable it came from, for messages.
    fernet_key: str | None = field(default=None, repr=False)
    fernet_key_name: str = "SLUICEGATE_FERNET_KEY"

    @property
    def source_display(self) -> str:
        """The source URL with its password masked."""
        return mask_url(self.source_url)

    @property
    def ledger_display(self) -> str:
        """The ledger URL with its password masked."""
        return mask_url(self.ledger_url)

    @property
    def shared_database(self) -> bool:
        """Whether the ledger lives in the source database (a SQLite file however spelt)."""
        return same_database(self.ledger_url, self.source_url)


@dataclass(frozen=True, kw_only=True)
class TaskBase:
    """What every task has: a folder with ``select.sql``, a format and a path template.

    Subclasses (one per kind) set ``kind`` and add their own fields.
    """

    kind: ClassVar[str] = ""
    name: str
    folder: Path
    select_sql: str
    format: str
    path: str
    description: str = ""
    schedule: str | None = None
    schedule_zone: str = "UTC"

    @property
    def extension(self) -> str:
        """The file extension for this task's format."""
        return self.format


# The public name of "a task of any kind".
TaskSpec = TaskBase


@dataclass(frozen=True, kw_only=True)
class RowTask(TaskBase):
    """A task whose rows are read in batches of units, one query per batch."""

    batch_size: int
    order_by: tuple[str, ...] = ()
    primary_key: tuple[str, ...] = ()
    columns: tuple[tuple[str, str], ...] = ()  # [columns]: (name, kind) pins, SQLite sources only


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
    # MariaDB/MySQL: the zone of the wall-clock times in DATETIME columns (None: they are UTC)
    datetime_zone: str | None = None


@dataclass(frozen=True, kw_only=True)
class CaptureSpec:
    """How changed source rows are mapped to partitions."""

    mode: CaptureMode = "explicit"
    table: str | None = None
    keys: Mapping[str, str] = field(default_factory=dict)
    time: str | None = None
    cursor: str | None = None
    overlap: float = 3600.0
    triggers: Literal["statement", "row"] = "statement"  # PostgreSQL; elsewhere they are row triggers


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
    tasks: Mapping[str, TaskBase]
    problems: tuple[TaskProblem, ...] = ()

    def task(self, name: str) -> TaskBase:
        """Return the task called ``name`` or raise a ConfigError naming the known tasks."""
        if name in self.tasks:
            return self.tasks[name]
        for problem in self.problems:
            if problem.name == name:
                raise ConfigError(problem.message)
        known = ", ".join(sorted(self.tasks)) or "none"
        raise ConfigError(f"no task named {name!r} in {self.settings.root / 'tasks'}; known tasks: {known}")

    def select(self, names: tuple[str, ...] | list[str]) -> list[TaskBase]:
        """Return the named tasks (all tasks when ``names`` is empty), each once, in the order first
        named: ``run studies studies`` ran the task twice, with two summaries."""
        if not names:
            return [self.tasks[n] for n in sorted(self.tasks)]
        return [self.task(n) for n in dict.fromkeys(names)]

    def runnable(self, names: tuple[str, ...] | list[str]) -> list[TaskBase]:
        """The named tasks to run (all when ``names`` is empty), as :meth:`select` returns them, less
        those whose folder did not load: the caller reports those (:attr:`problems`), which stop the
        others no more when named than when not (``run a broken`` ran nothing). Named alone, or
        with a name no folder has, :meth:`select`'s error is raised."""
        broken = {p.name for p in self.problems}
        loaded = [n for n in names if n not in broken]
        return self.select(loaded if loaded or not names else names)
