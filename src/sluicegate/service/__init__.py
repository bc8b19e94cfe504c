"""The HTTP service: the same library calls as the CLI, behind FastAPI.

``create_app(project_dir, env, token=..., insecure=...)`` builds the app; ``sluicegate serve``
runs it with uvicorn. Mutating endpoints need ``Authorization: Bearer <token>``. Runs are
recorded on the ledger, so any replica can answer ``GET /runs/{id}``.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
