"""The ``task.toml`` fields every kind shares, read once for all kind loaders."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import validate
from .config import read_select
from .exceptions import ConfigError
from .specs import Settings

BASE_KEYS = frozenset({"kind", "description", "format", "path", "schedule", "schedule_zone"})
ROW_KEYS = BASE_KEYS | {"batch_size", "order_by", "primary_key", "columns"}


def base_fields(
    *,
    name: str,
    folder: Path,
    raw: Mapping[str, Any],
    settings: Settings,
    default_format: str | None = None,
    default_path: str | None = None,
) -> dict[str, Any]:
    """The :class:`~sluicegate.specs.TaskBase` fields of a task, as keyword arguments."""
    where = str(folder / "task.toml")
    path = raw.get("path", default_path)
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(
            f'{where} path: missing; give a template such as "{{location_id}}/{{day:%Y%m%d}}.{{ext}}"'
        )
    schedule, schedule_zone = validate.schedule(raw, where)
    return {
        "name": name,
        "folder": folder,
        "select_sql": read_select(folder),
        "format": validate.file_format(
            raw.get("format", default_format or settings.format), f"{where} format"
        ),
        "path": path,
        "description": str(raw.get("description", "")),
        "schedule": schedule,
        "schedule_zone": schedule_zone,
    }


def row_fields(
    raw: Mapping[str, Any], settings: Settings, where: str, time_column: str | None
) -> dict[str, Any]:
    """The :class:`~sluicegate.specs.RowTask` fields (batching, row order, column kinds)."""
    return {
        "batch_size": validate.whole_number(
            raw.get("batch_size", settings.batch_size), f"{where} batch_size"
        ),
        "order_by": validate.identifiers(raw.get("order_by", []), f"{where} order_by", '["sensors_id"]'),
        "primary_key": validate.identifiers(
            raw.get("primary_key", []), f"{where} primary_key", '["sensors_id", "datetime"]'
        ),
        "columns": validate.column_kinds(raw.get("columns", {}), f"{where} [columns]", time_column),
    }
