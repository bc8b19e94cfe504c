"""Start-up: a short command imports only what it needs (every cron run and cold start pays it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support import Db, write_project

HEAVY = ("pyarrow", "psycopg", "fastapi", "boto3", "adbc_driver_postgresql")

PROBE = """
import json, sys
from sluicegate.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {heavy!r})
print("\\nPROBE " + json.dumps({{"code": code, "heavy": heavy}}))
"""


def _probe(*args: str) -> tuple[str, dict[str, object]]:
    """Run the CLI with ``args`` in a fresh interpreter; return its output and what it imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=set(HEAVY)), *args],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    out, _, report = proc.stdout.rpartition("\nPROBE ")
    return out, json.loads(report)


def test_status_on_a_sqlite_project_imports_no_heavy_dependency(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data.db'}"
    Db(url).close()
    root = write_project(tmp_path / "proj", source=url, destination=f"file://{tmp_path / 'out'}")
    out, report = _probe("-C", str(root), "status")
    assert report["code"] == 0, out
    assert "openaq: 0 pending" in out
    assert report["heavy"] == [], f"status imported {report['heavy']}"
