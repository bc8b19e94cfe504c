"""The ``sluicegate`` command: a thin layer that parses, calls one library function, renders.

``app`` holds the command group and what commands share; ``admin``, ``run``, ``serve``,
``blocks`` and ``secret`` define the commands (importing them registers them on the group);
``render`` prints results.
"""

from __future__ import annotations

from . import admin, blocks, ingest, run, secret, serve
from .app import main

__all__ = ["admin", "blocks", "ingest", "main", "run", "secret", "serve"]
