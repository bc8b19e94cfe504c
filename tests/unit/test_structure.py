"""The shape of the code: the public API, SQL blocks named after their methods, no private
access across modules, no import cycle between configuration and partitions, size limits."""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
import textwrap
import types
from pathlib import Path

import pytest

import sluicegate
from sluicegate.ledger import (
    AggregateStore,
    ArchiveStore,
    BlockStore,
    CaptureStore,
    FoundStore,
    IngestStore,
    PartitionStore,
    RunStore,
    SchemaStore,
    WatermarkStore,
)
from sluicegate.ledger.core import Store
from sluicegate.sql import DIALECTS, PARTIAL_DIALECTS, STORES, NotYet, queries

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "sluicegate"
STORE_CLASSES: list[type[Store]] = [
    SchemaStore,
    PartitionStore,
    CaptureStore,
    WatermarkStore,
    ArchiveStore,
    RunStore,
    BlockStore,
    AggregateStore,
    IngestStore,
    FoundStore,
]
# Blocks that exist in some dialects only: SQLite adds columns with its own statements (PostgreSQL
# uses ADD COLUMN IF NOT EXISTS in ensure_schema), and the archive lock of SQLite is a file lock.
ONE_DIALECT: dict[str, str | tuple[str, ...]] = {
    "add_failed_destination": "sqlite",
    "add_run_heartbeat": "sqlite",
    "add_partition_etag": "sqlite",
    "lock": ("postgresql", "mariadb"),
    "lock_held": ("postgresql", "mariadb"),
    # MariaDB/MySQL have no UPDATE ... RETURNING and no DELETE ... RETURNING with SKIP LOCKED.
    "delete_changes": "mariadb",
    "claim_take": "mariadb",
    "lone": ("postgresql", "sqlite"),  # MariaDB: claim_take takes the row under the lone token
    "claimed": "mariadb",
    "claim_attempts": "mariadb",
    "renew_rows": "mariadb",
    "release_rows": "mariadb",
    "reset_failed_rows": "mariadb",
    "upgrade_collation": "mariadb",
    "upgrade_inbox": "mariadb",
    "upgrade_padding": "mariadb",
    "path_index_missing": "mariadb",
    "lock_paths": ("postgresql", "mariadb"),  # SQLite: BEGIN IMMEDIATE serializes commits
    "unlock_paths": "mariadb",  # PostgreSQL's advisory locks end with the transaction
    "lock_parked": ("postgresql", "mariadb"),  # SQLite: BEGIN IMMEDIATE serializes batches
    "unlock_parked": "mariadb",
    "upgrade_path_index": "mariadb",
}


def test_public_api_is_exactly_all() -> None:
    """Every public name of the ``sluicegate`` namespace is in ``__all__`` and vice versa."""
    assert sluicegate.__all__ == sorted(sluicegate.__all__)
    public = {
        name
        for name, value in vars(sluicegate).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert public == set(sluicegate.__all__)
    for name in (
        "SluicegateError", "ConfigError", "UsageError", "LedgerError", "ExportError", "TransientError",
        "SourceUnavailable", "DestinationUnavailable", "TerminalError", "BadPartitionValue", "DataError",
    ):  # fmt: skip
        assert name in sluicegate.__all__, f"{name} is in the documented exception tree"


def _store_calls(cls: type[Store]) -> dict[str, set[str]]:
    """Per method of ``cls`` and of the stores it builds on (``PartitionAdmin``): the SQL block
    names it runs (``self._run("x"`` or ``self.q["x"]``)."""
    out: dict[str, set[str]] = {}
    for base in cls.__mro__:
        if issubclass(base, Store) and base is not Store:
            out |= _class_calls(base)
    return out


def _class_calls(cls: type[Store]) -> dict[str, set[str]]:
    [klass] = ast.parse(textwrap.dedent(inspect.getsource(cls))).body
    assert isinstance(klass, ast.ClassDef)
    out: dict[str, set[str]] = {}
    for node in klass.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        names = set()
        for sub in ast.walk(node):  # nested functions count as their method's
            if (
                isinstance(sub, ast.Call)
                and isinstance(sub.func, ast.Attribute)
                and sub.func.attr in ("_run", "_script")  # a statement, or a block of several
                and sub.args
                and isinstance(sub.args[0], ast.Constant)
            ):
                names.add(sub.args[0].value)
            if (
                isinstance(sub, ast.Subscript)
                and isinstance(sub.value, ast.Attribute)
                and sub.value.attr == "q"
            ) and isinstance(sub.slice, ast.Constant):
                names.add(sub.slice.value)
        out[node.name] = names
    return out


# (dialect, store) pairs that exist: every store on a full dialect, the stores a partial one has.
STORE_PAIRS = [
    pytest.param(d, c, id=f"{d}-{c.__name__}")
    for d in DIALECTS + PARTIAL_DIALECTS
    for c in STORE_CLASSES
    if not isinstance(queries(d, c.SQL, "x_", "s"), NotYet)
]
# What MariaDB does not have yet (its tasks are refused with exit 2; docs/concepts.md "MariaDB").
MARIADB_NOT_YET: set[str] = set()


def test_a_partial_dialect_lacks_exactly_the_stores_it_documents() -> None:
    missing = {c.SQL for c in STORE_CLASSES if isinstance(queries("mariadb", c.SQL, "x_", "s"), NotYet)}
    assert missing == MARIADB_NOT_YET


@pytest.mark.parametrize(("dialect", "cls"), STORE_PAIRS)
def test_every_sql_block_is_run_by_the_method_of_its_name(dialect: str, cls: type[Store]) -> None:
    """Every store's blocks, on every dialect; a partial dialect (MariaDB) for the stores it has."""
    blocks = set(queries(dialect, cls.SQL, "x_", "s"))
    calls = _store_calls(cls)
    for method, names in calls.items():
        for name in names:
            assert name == method, f"{cls.__name__}.{method} runs block {name!r}: name them alike"
    run = {name for names in calls.values() for name in names}
    expected = {n for n in run if dialect in _dialects(ONE_DIALECT.get(n, dialect))}
    assert blocks == expected, f"{dialect}/{cls.SQL}.sql blocks vs {cls.__name__} methods"
    assert all("{t}" not in body for body in queries(dialect, cls.SQL, "x_", "s").values())


def _dialects(value: str | tuple[str, ...]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else value


def test_every_sql_file_belongs_to_a_store() -> None:
    assert set(STORES) == {cls.SQL for cls in STORE_CLASSES}
    for dialect in DIALECTS:
        assert {p.stem for p in (SRC / "sql" / dialect).glob("*.sql")} == set(STORES)


def test_no_module_reaches_into_another_modules_private_names() -> None:
    shape = importlib.import_module("shape") if "shape" in sys.modules else _load_shape()
    assert shape.measure(SRC)["private_access_sites"] == []


def _load_shape() -> types.ModuleType:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module("shape")
    finally:
        sys.path.pop(0)


def test_modules_and_functions_stay_small() -> None:
    """Modules of at most 500 lines (generate.py, the data generator, aside); functions of at most 60."""
    shape = _load_shape()
    figures = shape.measure(SRC)
    modules = [(m, n) for m, n in figures["largest_modules"] if not m.endswith("generate.py")]
    assert all(n <= 500 for _, n in modules), modules
    longest = [(f, n) for f, n in figures["longest_functions"] if n > 60]
    assert longest == [], longest
    assert figures["noqa_c901"] == 0


def _imports(module: Path) -> set[str]:
    """The sibling modules ``module`` imports (``from .x import`` and ``from . import x``), anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
    return found


def test_configuration_and_partitions_do_not_import_each_other() -> None:
    assert "config" not in _imports(SRC / "partitions.py")
    assert "partitions" not in _imports(SRC / "config.py")


def test_postgresql_orders_partition_keys_by_their_bytes() -> None:
    """Marks lock partitions in Python's order of their pkeys (code points, = UTF-8 bytes); every
    PostgreSQL statement that orders (and so locks) them by pkey must use that order, not the
    database's collation (en-US puts "antwerp" before "Gent"): two orders of locking deadlock."""
    import re

    sql = (Path(sluicegate.__file__).parent / "sql" / "postgresql" / "partitions.sql").read_text()
    ordered = re.findall(r"ORDER BY[^;\n]*?\bpkey\b(?: COLLATE \"C\")?", sql)
    assert ordered and all(o.endswith('COLLATE "C"') for o in ordered), ordered
