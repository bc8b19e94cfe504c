"""sluicegate: incremental, exactly-once exports from SQL databases to files.

The public API is the names in ``__all__``; everything else is internal. A test checks that
every public name of this namespace is in ``__all__`` and that ``__all__`` is sorted.
"""

from __future__ import annotations

from .config import load_project
from .engine import Exporter, run
from .exceptions import (
    BadPartitionValue,
    ConfigError,
    DataError,
    DestinationUnavailable,
    ExportError,
    LedgerError,
    LedgerPermissionDenied,
    PermissionDenied,
    SluicegateError,
    SourceUnavailable,
    TerminalError,
    TransientError,
    UsageError,
)
from .ledger import Claim, Ledger, TaskStatus
from .operations import check_project, install, mark, reexport, reset_failed, status
from .options import RunOptions, TaskSummary
from .specs import Project, Settings, TaskSpec

__all__ = [
    "BadPartitionValue",
    "Claim",
    "ConfigError",
    "DataError",
    "DestinationUnavailable",
    "ExportError",
    "Exporter",
    "Ledger",
    "LedgerError",
    "LedgerPermissionDenied",
    "PermissionDenied",
    "Project",
    "RunOptions",
    "Settings",
    "SluicegateError",
    "SourceUnavailable",
    "TaskSpec",
    "TaskStatus",
    "TaskSummary",
    "TerminalError",
    "TransientError",
    "UsageError",
    "check_project",
    "install",
    "load_project",
    "mark",
    "reexport",
    "reset_failed",
    "run",
    "status",
]
