"""The HTTP API's request and response bodies."""

from __future__ import annotations

import datetime as dt
import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from ..validate import is_unicode

MAX_COUNT = 2**31 - 1  # limits and offsets: the largest every ledger database stores as an integer


class ExportTask(BaseModel):
    """A task as the Common Knowledge service listed it."""

    name: str
    select_query: str
    delete_query: str | None = None


class StatusOk(BaseModel):
    """The original's answer, plus the id of the run it started."""

    status: Literal["Ok"] = "Ok"
    run_id: str


class TaskInfo(BaseModel):
    """A task with its configuration, ledger counts, or the error that keeps it from loading."""

    name: str
    kind: str | None = None
    description: str | None = None
    format: str | None = None
    keys: list[str] = Field(default_factory=list)
    capture: str | None = None
    path: str | None = None
    schedule: str | None = None
    error: str | None = None
    counts: dict[str, Any] | None = None


class RunRequest(BaseModel):
    """The options of ``sluicegate run``."""

    # A misspelt field ("dryrun", "entites") must not start a real run of everything (422).
    model_config = ConfigDict(extra="forbid")

    # Strict: lax mode read "yes", "no", 0 and "1" as booleans and "2", true and 2.0 as a limit.
    limit: StrictInt | None = Field(default=None, ge=1, le=MAX_COUNT)
    dry_run: StrictBool = False
    reexport: StrictBool = Field(
        default=False, description="Partitioned tasks: queue the time window again first."
    )
    time_min: dt.datetime | None = Field(default=None, description="Without an offset: UTC.")
    time_max: dt.datetime | None = Field(default=None, description="Without an offset: UTC.")
    ignore_watermark: StrictBool = False
    export_type: Literal["daily", "hourly", "instant"] | None = None
    entities: list[str] | None = None
    tag: str | None = None

    @field_validator("time_min", "time_max")
    @classmethod
    def _utc_when_naive(cls, value: dt.datetime | None) -> dt.datetime | None:
        return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value

    @field_validator("tag", "entities")
    @classmethod
    def _encodable(cls, value: str | list[str] | None) -> str | list[str] | None:
        for text in [value] if isinstance(value, str) else value or ():
            if not is_unicode(text):  # a lone surrogate (JSON "\ud800"): no database stores it
                raise ValueError("holds a character that is not valid Unicode (a lone surrogate)")
            if any(unicodedata.category(c) == "Cc" for c in text):  # NUL, a newline, an escape
                raise ValueError("holds a control character")
        return value


class RunAccepted(BaseModel):
    """A run was recorded and started."""

    run_id: str
    # What the run leaves out of the request: a blocks range's blocks that have not settled.
    warnings: list[str] = Field(default_factory=list)


class RunInfo(BaseModel):
    """A run as recorded on the ledger."""

    id: str
    task: str
    tag: str | None = None
    state: Literal["running", "succeeded", "failed", "abandoned"]
    request: dict[str, Any] | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    summary: list[dict[str, Any]] | None = None


class PartitionInfo(BaseModel):
    """One partition and its state."""

    partition: str
    keys: dict[str, Any]
    state: str
    version: int = 0
    exported_version: int = 0
    attempts: int
    last_error: str | None = None
    path: str | None = None
    rows: int | None = None
    bytes: int | None = None
    exported_at: dt.datetime | None = None
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None
    # blocks tasks: one row per (block, stage)
    stage: str | None = None
    block: str | None = None
    records_total: int | None = None
    records_errors: int | None = None


class Health(BaseModel):
    """What /healthz checked."""

    status: Literal["ok", "failing"]
    checks: dict[str, str]
