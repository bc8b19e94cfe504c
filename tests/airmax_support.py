"""Helpers for the airmax tests: the example project, raw measurements, reading a table back."""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sluicegate import generate_airmax, tables
from sluicegate.scaffold import init_project

UTC = dt.UTC
AGGREGATE = "current_air_quality"


def airmax_project(
    root: Path,
    source: str,
    *,
    sink: str | None = None,
    ledger: str | None = None,
    every: str = "5m",
    width: str = "3h",
    task_extra: str = "",
    destination_extra: str = "",
    defaults_extra: str = "",
) -> Path:
    """``sluicegate init --example airmax`` in ``root``, with these databases; the schema created
    in ``source`` (and in ``sink``, when the aggregate's table lives elsewhere)."""
    init_project(root, example="airmax", force=True)
    ledger_line = f'url = "{ledger}"' if ledger else ""
    (root / "sluicegate.toml").write_text(
        textwrap.dedent(
            f"""
            [source]
            url = "{source}"
            [ledger]
            {ledger_line}
            [destination]
            url = "{root / 'exports'}"
            [defaults]
            format = "csv"
            backoff = "0s"
            {defaults_extra}
            """
        )
    )
    sink_line = f'url = "{sink}"' if sink else ""
    (root / "tasks" / AGGREGATE / "task.toml").write_text(
        textwrap.dedent(
            f"""
            kind = "aggregate"
            every = "{every}"
            {task_extra}
            [window]
            table = "raw"
            column = "measurement_time_utc"
            width = "{width}"
            [destination]
            table = "{AGGREGATE}"
            {sink_line}
            {destination_extra}
            """
        )
    )
    generate_airmax.create_schema(source)
    if sink:
        generate_airmax.create_schema(sink)
    return root


def add_raw(url: str, rows: Iterable[tuple[str, dt.datetime, float | str | None]], *, prefix: str = "m") -> int:
    """Insert ``(city, measured at, value)`` rows into ``raw`` (message ids ``prefix0``, ``prefix1``, ...)."""
    db = tables.TableDb(url)
    try:
        insert = tables.Insert(
            flavor=db.flavor, table="raw", columns=("message_id", "measurement_time_utc", "city",
                                                    "parameter_name", "parameter_unit", "parameter_value"),
        )  # fmt: skip
        batch = [
            (f"{prefix}{i}", tables.time_value(db.flavor, at), city, "pm25", "µg/m³", value)
            for i, (city, at, value) in enumerate(rows)
        ]
        with db.transaction() as cur:
            insert.run(cur, batch)
        return len(batch)
    finally:
        db.close()


def table(url: str, name: str = AGGREGATE, order: str = "city") -> list[dict[str, Any]]:
    """Every row of a table, as dicts, ordered by ``order``."""
    db = tables.TableDb(url)
    try:
        names, rows = db.query(f"SELECT * FROM {db.quote(name)} ORDER BY {db.quote(order)}")
    finally:
        db.close()
    return [dict(zip(names, row, strict=True)) for row in rows]


def stamps(rows: Sequence[dict[str, Any]]) -> set[dt.datetime | None]:
    """The evaluation times in rows of current_air_quality, as aware UTC datetimes."""
    return {tables.parse_time(r["evaluation_time_utc"]) for r in rows}
