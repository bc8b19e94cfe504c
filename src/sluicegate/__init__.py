"""sluicegate: incremental, exactly-once exports from SQL databases to files.

The public API is the names in ``__all__``; everything else is internal.
"""

from __future__ import annotations

from .config import Project, Settings, TaskSpec, load_project
from .engine import Exporter, RunOptions, TaskSummary, run
from .exceptions import (
    ConfigError,
    DataError,
    ExportError,
    LedgerError,
    SluicegateError,
    TerminalError,
    TransientError,
    UsageError,
)
from .ledger import Claim, Ledger, TaskStatus
from .operations import check_project, install, mark, reexport, reset_failed, status

__all__ = [
    "Claim",
    "ConfigError",
    "DataError",
    "ExportError",
    "Exporter",
    "Ledger",
    "LedgerError",
    "Project",
    "RunOptions",
    "Settings",
    "SluicegateError",
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
