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


ALLOCATOR_PROBE = """
import sys
from sluicegate.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
import pyarrow
print("\\nPOOL " + pyarrow.default_memory_pool().backend_name)
"""


def _pool_after_cli(root: Path, preset: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICEGATE_", "ARROW_"))}
    if preset:
        env["ARROW_DEFAULT_MEMORY_POOL"] = preset
    proc = subprocess.run(
        [sys.executable, "-c", ALLOCATOR_PROBE, "-C", str(root), "run"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    return proc.stdout.rpartition("\nPOOL ")[2].strip()


def test_the_cli_has_arrow_allocate_with_malloc_unless_the_environment_names_a_pool(tmp_path: Path) -> None:
    """mimalloc, Arrow's default, held 20-35 MiB more at peak (bench/README.md); a user's choice stands."""
    url = f"sqlite:///{tmp_path / 'data.db'}"
    Db(url).close()
    root = write_project(tmp_path / "proj", source=url, destination=f"file://{tmp_path / 'out'}")
    assert _pool_after_cli(root, None) == "system"
    assert _pool_after_cli(root, "mimalloc") == "mimalloc"
