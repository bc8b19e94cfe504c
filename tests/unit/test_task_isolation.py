"""One task's failure stops that task only: a bug (an exception sluicegate does not know) in one
task's run is that task's error, recorded for status, and the run's other tasks are exported."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pytest

from sluicegate import engine, operations
from sluicegate.drivers import partitioned
from support import Db, files, hours, load, write_project

DAY = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def test_a_bug_in_one_tasks_run_is_its_error_and_the_other_tasks_are_exported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(
        tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt="csv", zone="UTC"
    )
    shutil.copytree(root / "tasks" / "openaq", root / "tasks" / "broken")
    toml = root / "tasks" / "broken" / "task.toml"
    toml.write_text(toml.read_text().replace("records/", "other/"))
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, hours(DAY, 24))
    real = partitioned.Driver.run

    def run(self: Any, task: Any, *args: Any, **kwargs: Any) -> int:
        if task.name == "broken":  # "broken" runs before "openaq"
            raise KeyError("a key the driver forgot")
        return int(real(self, task, *args, **kwargs))

    monkeypatch.setattr(partitioned.Driver, "run", run)
    summaries = {s.task: s for s in engine.run(load(root))}
    assert summaries["openaq"].exported == 1 and not summaries["openaq"].task_errors
    [error] = summaries["broken"].task_errors
    assert error.startswith("KeyError: 'a key the driver forgot'") and "a bug in sluicegate" in error, error
    assert [p.name for p in files(tmp_path / "out")] == ["location-1-20240101.csv"]
    [status] = [r for r in operations.status(load(root)) if r["task"] == "broken"]
    assert status["task_error"] == error  # shown until a run of the task succeeds
