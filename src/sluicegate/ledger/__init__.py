"""The ledger: stores over one core, in one database.

:class:`Ledger` opens a :class:`~.core.LedgerCore` (the connection, the dialect, named
statements, reconnects) and one store per concern, all sharing that connection:

========================  ==========================================  ======================
store                     what it holds                               SQL file
========================  ==========================================  ======================
``ledger.partitions``     partitions of partitioned tasks             ``partitions.sql``
``ledger.capture``        the trigger inbox and scan high-water marks ``capture.sql``
``ledger.watermarks``     watermarks of incremental tasks             ``watermarks.sql``
``ledger.archive``        runs of archive tasks, lock, witness        ``archive.sql``
``ledger.runs``           runs and schedule ticks                     ``runs.sql``
``ledger.blocks``         (block, stage) rows of blocks tasks         ``blocks.sql``
``ledger.aggregates``     evaluations of aggregate tasks              ``aggregates.sql``
``ledger.ingest``         ingest log and parked messages (source db)  ``ingest.sql``
``ledger.found``          whether it records anything (lost ledgers)  ``found.sql``
========================  ==========================================  ======================

Every SQL block is named after the store method that runs it. A new task kind adds its own
store (a :class:`~.core.Store` subclass and its ``sql/<dialect>/<store>.sql``) and an
attribute here.
"""

from __future__ import annotations

from typing import Any

from .. import db
from .aggregates import AggregateStore
from .archive import ArchiveBusy, ArchiveStore
from .blocks import BlockStore, RangeQuery, StageClaim, StageResult
from .capture import CaptureStore
from .claims import Claim, ExportResult
from .core import SCHEMA_VERSION, LedgerCore, SchemaStore, Store
from .found import FoundStore
from .ingest import IngestStore
from .partition_admin import TaskStatus
from .partitions import PartitionStore
from .runs import ABANDONED_AFTER, HEARTBEAT_SECONDS, RunStore, run_heartbeat
from .watermarks import WatermarkClaim, WatermarkStore

__all__ = [
    "ABANDONED_AFTER",
    "HEARTBEAT_SECONDS",
    "SCHEMA_VERSION",
    "AggregateStore",
    "ArchiveBusy",
    "ArchiveStore",
    "BlockStore",
    "CaptureStore",
    "Claim",
    "ExportResult",
    "FoundStore",
    "IngestStore",
    "Ledger",
    "LedgerCore",
    "PartitionStore",
    "RangeQuery",
    "RunStore",
    "StageClaim",
    "StageResult",
    "Store",
    "TaskStatus",
    "WatermarkClaim",
    "WatermarkStore",
    "open_ledger",
    "run_heartbeat",
]


class Ledger:
    """The ledger tables in one database: the ledger database, or the source's inbox."""

    def __init__(self, url: str, *, schema: str = "sluicegate") -> None:
        self.core = LedgerCore(url, schema=schema)
        self.schema_store = SchemaStore(self.core)
        self.partitions = PartitionStore(self.core)
        self.capture = CaptureStore(self.core)
        self.watermarks = WatermarkStore(self.core)
        self.archive = ArchiveStore(self.core)
        self.runs = RunStore(self.core)
        self.blocks = BlockStore(self.core)
        self.aggregates = AggregateStore(self.core)
        self.ingest = IngestStore(self.core)
        self.found = FoundStore(self.core)

    @property
    def url(self) -> str:
        """The database URL (with its password: never print it, see masking.mask_url)."""
        return self.core.url

    @property
    def schema(self) -> str:
        """The ledger schema (PostgreSQL) the tables live in."""
        return self.core.schema

    @property
    def dialect(self) -> Any:
        """The database's dialect."""
        return self.core.dialect

    @property
    def conn(self) -> Any:
        """The DB-API connection (for tests and checks that read the tables directly)."""
        return self.core.conn

    @property
    def table_prefix(self) -> str:
        """How ledger tables are named, unquoted: ``schema.`` on PostgreSQL, ``sluicegate_`` on SQLite."""
        return f"{self.core.schema}." if self.dialect is db.POSTGRESQL else self.core.prefix

    def ensure_schema(self) -> None:
        """Create or upgrade the ledger tables (idempotent, safe to race)."""
        self.schema_store.ensure_schema()

    def close(self) -> None:
        """Close the connection."""
        self.core.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_ledger(url: str, schema: str) -> Ledger:
    """A ledger with its tables created or upgraded."""
    ledger = Ledger(url, schema=schema)
    try:
        ledger.ensure_schema()
    except BaseException:
        ledger.close()
        raise
    return ledger
