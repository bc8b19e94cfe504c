"""The ``sluicegate`` command: a thin layer that parses, calls one library function, renders.

``app`` holds the command group and what commands share; ``admin``, ``run``, ``serve``,
``blocks``, ``changes`` and ``secret`` define the commands (importing them registers them on the group);
``render`` prints results.
"""

from __future__ import annotations

from . import admin, blocks, changes, ingest, run, secret, serve
from .app import main

__all__ = ["admin", "blocks", "changes", "ingest", "main", "run", "secret", "serve"]
