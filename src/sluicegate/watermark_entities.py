"""The entities of an incremental task (``entity = ...``): those task.toml or a request names, or
those its select.sql finds, with one query (:mod:`sluicegate.watermarks` plans their windows).

A failure of that query names the task and its select.sql: it stops the whole task (no entity is
known yet), and "database ...: canceling statement due to statement timeout" alone said neither
which of the run's tasks stopped nor which query to make faster. A query error (bad SQL, a value
the query refuses) is the task's configuration, exit 2, as when select.sql does not run at all; a
transient one (a timeout, a lost connection) keeps its class and "will retry": the next run tries
again, and nothing is claimed, charged or parked meanwhile.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .exceptions import ConfigError, DataError, ExportError, prefixed

if TYPE_CHECKING:
    from .drivers.incremental import Task as TaskSpec
    from .export_request import ExportRequest


def discover_entities(task: TaskSpec, source: Any) -> list[Any]:
    """Every entity present in the source, with one query."""
    column = f"q.{source.dialect.quote(task.entity)}"
    listed = ", ".join([column, *source.dialect.exact_copies([column])])
    query = f"SELECT DISTINCT {listed} FROM ({task.select_sql}) AS q WHERE {column} IS NOT NULL"
    return sorted((r[0] for r in _execute(task, source, query)), key=str)


def _execute(task: TaskSpec, source: Any, query: str) -> list[Any]:
    """``query``'s rows; a failure names the task and its select.sql (see the module)."""
    try:
        return list(source.execute(query))
    except ExportError as exc:  # (a LedgerError is not the source's; it says so already)
        where = f"task {task.name}: finding its entities with {task.folder / 'select.sql'} failed"
        if isinstance(exc, DataError):
            raise ConfigError(f"{where}: {exc}; fix the query, or list the entities in task.toml") from None
        raise prefixed(exc, where) from None


def entity_values(task: TaskSpec, request: ExportRequest, source: Any) -> dict[str, Any]:
    """The entities to plan, each by its text: those named (task.toml, the request), else those found."""
    chosen = request.entities or task.entities
    if chosen:
        # Text stays text ("007" is not 7): the driver reads it as the entity column's kind.
        return {str(e): e for e in chosen}
    found = discover_entities(task, source)
    if not found and _execute(task, source, f"SELECT 1 FROM ({task.select_sql}) AS q LIMIT 1"):
        raise ConfigError(  # rows, all without one: the entity column is the wrong one, or misread
            f"{task.folder / 'select.sql'} returned rows but no entities: {task.entity} is NULL in every"
            f" row; set entity to the column that names each row's entity, or fill it in"
        )
    kinds = {type(v).__name__: v for v in found}
    if len(kinds) > 1:
        # A SQLite column without a type keeps 7 and '7' apart: one of them was read as the
        # other, matched no row, and its rows were in no file while its watermark moved on.
        shown = ", ".join(f"{v!r} ({k})" for k, v in sorted(kinds.items()))
        raise ConfigError(
            f"{task.folder / 'select.sql'}: the entity column {task.entity!r} holds values of more than one"
            f" type ({shown}); return it as one type, e.g. CAST({task.entity} AS TEXT) AS {task.entity}"
        )
    return {str(v): v for v in found}
