"""Named SQL queries, loaded once from the ``.sql`` files beside this module.

``<dialect>/<store>.sql`` holds one ledger store's statements (``ledger/<store>.py``): blocks
that start with ``-- name --``, named after the method that runs them, and a one-line
description comment. Table names are written ``{t}partitions``; :func:`queries` replaces
``{t}`` with the ledger prefix: ``"schema".`` on PostgreSQL, ``sluicegate_`` on SQLite.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

_BLOCK = re.compile(r"^-- ([a-z_]+) --\s*$", re.MULTILINE)
DIALECTS = ("postgresql", "sqlite")
STORES = (
    "schema", "partitions", "capture", "watermarks", "archive", "runs", "blocks", "aggregates", "ingest",
)  # fmt: skip


def parse(text: str) -> dict[str, str]:
    """Split a ``.sql`` file into ``{name: statement}`` (comment lines dropped)."""
    names = _BLOCK.split(text)
    out: dict[str, str] = {}
    for i in range(1, len(names), 2):
        body = "\n".join(
            line for line in names[i + 1].strip().splitlines() if not line.lstrip().startswith("--")
        ).strip()
        out[names[i]] = body.rstrip(";").strip()
    return out


@lru_cache(maxsize=64)
def queries(dialect: str, store: str, prefix: str, schema: str = "") -> dict[str, str]:
    """The named statements of ``store`` for ``dialect`` with table prefix ``prefix``.

    ``schema`` (PostgreSQL only) replaces ``{t_schema}``; both come from validated names.
    """
    text = resources.files(__package__).joinpath(dialect, f"{store}.sql").read_text(encoding="utf-8")
    return {
        name: body.replace("{t_schema}", schema).replace("{t}", prefix) for name, body in parse(text).items()
    }
