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

from ..exceptions import ConfigError

EXACT = "utf8mb4_nopad_bin"  # MariaDB's; MySQL 8 names it utf8mb4_0900_bin (mariadb_conn.exact_collation)
_BLOCK = re.compile(r"^-- ([a-z_]+) --\s*$", re.MULTILINE)
DIALECTS = ("postgresql", "sqlite")
# Dialects whose stores are being added one by one: a missing file is a store not supported yet.
PARTIAL_DIALECTS = ("mariadb",)
STORES = (
    "schema", "partitions", "capture", "watermarks", "archive", "runs", "blocks", "aggregates", "ingest",
    "found",
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
def queries(dialect: str, store: str, prefix: str, schema: str = "", exact: str = EXACT) -> dict[str, str]:
    """The named statements of ``store`` for ``dialect`` with table prefix ``prefix``.

    ``schema`` (PostgreSQL only) replaces ``{t_schema}``; both come from validated names.
    ``exact`` (MariaDB only) replaces ``{exact}``: the server's NO PAD binary collation.
    """
    path = resources.files(__package__).joinpath(dialect, f"{store}.sql")
    if dialect in PARTIAL_DIALECTS and not path.is_file():
        return NotYet(dialect, store)
    text = path.read_text(encoding="utf-8")
    return {
        name: body.replace("{t_schema}", schema).replace("{t}", prefix).replace("{exact}", exact)
        for name, body in parse(text).items()
    }


class NotYet(dict[str, str]):
    """The statements of a store a dialect does not have yet: asking for one is a ConfigError."""

    def __init__(self, dialect: str, store: str) -> None:
        super().__init__()
        self.dialect, self.store = dialect, store

    def __missing__(self, name: str) -> str:
        raise ConfigError(
            f"the {self.store} ledger tables ({name}) are not supported on {self.dialect} yet; "
            "keep the ledger ([ledger] url) on PostgreSQL or SQLite (see docs/concepts.md, MariaDB and MySQL)"
        )
