"""Blocks tasks after the operator changed something: rows deleted at the source and a forced
re-run, the task's settings edited between runs. On SQLite, with the CLI in this process."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from test_blocks import SQL_TASK, blocks_cli, make_project, with_rides

from sluicegate.cli import main

RANGE = ["--time-max", "2020-1-1-1", "--interval", "1"]


def latest_changes(root: Path) -> dict[str, str]:
    """``sluicegate changes``: the latest action per file."""
    result = CliRunner().invoke(
        main, ["-C", str(root), "changes", "trips", "--since", "2000-01-01", "--json"]
    )
    assert result.exit_code == 0, result.output
    return {c["path"]: c["action"] for c in json.loads(result.output)}


def test_a_later_stages_file_a_no_data_rerun_deletes_is_in_the_change_feed(tmp_path: Path) -> None:
    """The publish file of rows since deleted was removed with the extract's "no data", but the
    feed named only the extract's deletion: its readers kept the publish file as published."""
    root = make_project(
        tmp_path, task=SQL_TASK.replace("SELECT DISTINCT provider FROM rides", "SELECT 'lime'")
    )
    conn = with_rides(root, [(1, "lime", "2020-01-01T06:10:00Z")])
    assert blocks_cli(root, *RANGE).exit_code == 0
    published = "csv/lime/20200101T0100-0600.csv"
    assert latest_changes(root)[published] == "published"
    conn.execute("DELETE FROM rides")
    conn.commit()
    again = blocks_cli(root, *RANGE, "--key", "provider=lime", "--force")
    assert again.exit_code == 0, again.output
    assert not (root / "out" / published).exists()
    assert latest_changes(root) == {
        "extract/lime/2020-01-01T01:00-06:00.jsonl": "deleted",
        published: "deleted",
    }


def test_a_changed_grain_is_refused_not_taken_for_done_blocks(tmp_path: Path) -> None:
    """After ``grain = "day"`` replaced hours, the day starting where the first hour block started
    was that hour's row (keyed by its start), already done: the day was never exported, and
    ``run`` wrote each pending hour's file under its day's one path."""
    root = make_project(tmp_path, task=SQL_TASK)
    with_rides(root, [(1, "lime", "2020-01-01T06:10:00Z"), (2, "lime", "2020-01-01T09:10:00Z")])
    hours = blocks_cli(root, "--time-max", "2020-1-2-0", "--interval", "24", "--stage", "extract")
    assert hours.exit_code == 0, hours.output
    toml = root / "tasks/trips/task.toml"
    toml.write_text(toml.read_text().replace('zone = "US/Central"', 'zone = "US/Central"\ngrain = "day"'))
    for args in (["--dry-run"], []):
        day = blocks_cli(root, "--time-max", "2020-1-2-0", "--interval", "24", *args)
        assert day.exit_code == 2, day.output
        assert "the grain or zone changed since it was made" in day.output
        assert "Traceback" not in day.output
    assert not (root / "out/extract/lime/2020-01-01.jsonl").exists()
    pending = CliRunner().invoke(main, ["-C", str(root), "run", "trips"])  # the hours' publish stages
    assert "the grain or zone changed" in pending.output
    assert not (root / "out/csv").exists()


def test_later_stages_read_the_extracts_recorded_artifact_after_its_path_was_edited(tmp_path: Path) -> None:
    """Blocks extracted, then ``[extract] path`` edited: their publish read the file at the new
    path, never written, and was parked ("does not exist; run the stage that writes it") while
    the extract, done, would not run again."""
    root = make_project(tmp_path, task=SQL_TASK)
    with_rides(root, [(1, "lime", "2020-01-01T06:10:00Z")])
    assert blocks_cli(root, *RANGE, "--stage", "extract").exit_code == 0
    toml = root / "tasks/trips/task.toml"
    toml.write_text(toml.read_text().replace('path = "{stage}/{provider}/', 'path = "raw/{provider}/'))
    result = blocks_cli(root, *RANGE)
    assert result.exit_code == 0, result.output
    assert "1,lime," in (root / "out/csv/lime/20200101T0100-0600.csv").read_text()


def test_a_publish_path_naming_another_format_is_refused(tmp_path: Path) -> None:
    """`[publish] format = "parquet"` set under a path written out as ".csv": each block's
    Parquet file replaced its CSV one under the .csv name."""
    root = make_project(tmp_path, task=SQL_TASK)
    toml = root / "tasks/trips/task.toml"
    text = toml.read_text().replace("%M%z}.{ext}", "%M%z}.csv")
    assert 'format = "csv"' in text and "%M%z}.csv" in text, text
    toml.write_text(text.replace('format = "csv"', 'format = "parquet"'))
    with_rides(root, [(1, "lime", "2020-01-01T06:10:00Z")]).close()
    refused = CliRunner().invoke(main, ["-C", str(root), "check"])
    assert refused.exit_code == 2, refused.output
    assert (
        "[publish] path: " in refused.output
        and ".csv' ends in '.csv' but the format is 'parquet'" in refused.output
    )
