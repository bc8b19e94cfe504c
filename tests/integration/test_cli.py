"""The sluicegate command in real processes: exit codes, messages, secrets, OpenAQ settings, demo."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

from sluicegate import operations
from support import SLUICEGATE, Db, cli, files, hours, load, read_csv, write_project

UTC = dt.UTC


def _sqlite_project(tmp_path: Path, **kwargs: object) -> tuple[Path, Db]:
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), **kwargs)  # type: ignore[arg-type]
    db = Db(url)
    operations.install(load(root))
    for loc in (1, 2):
        db.location(loc, "UTC")
        db.insert(loc, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 48))
    return root, db


def test_run_json_summary_and_dry_run(tmp_path: Path) -> None:
    root, _ = _sqlite_project(tmp_path, fmt="csv")
    dry = cli(root, "run", "--dry-run", "--json", check=True)
    assert files(tmp_path / "out") == []
    # The first dry run sees no partitions yet: changes are folded in by a real run.
    plan = cli(root, "run", "--dry-run", check=True)
    assert "would be exported" in plan.stdout and json.loads(dry.stdout)[0]["exported"] == 0
    real = cli(root, "run", "--json", check=True)
    [summary] = json.loads(real.stdout)
    assert (summary["exported"], summary["unchanged"], summary["failed"], summary["rows"]) == (4, 0, 0, 96)
    assert summary["bytes"] == sum(p.stat().st_size for p in files(tmp_path / "out"))
    cli(root, "reexport", "openaq", "location_id=2", check=True)
    again = cli(root, "run", "--dry-run", check=True)
    assert again.stdout.count("(forced)") == 2 and "location_id=2" in again.stdout
    status = json.loads(cli(root, "status", "--json", check=True).stdout)
    assert status[0]["pending"] == 2 and status[0]["exported"] == 2


def test_a_reader_that_leaves_the_pipe_early_changes_no_exit_code(tmp_path: Path) -> None:
    """`sluicegate run --dry-run | head -1` exited 1 (a BrokenPipeError, which click turns into 1
    whatever the command's own exit code): a script under `set -o pipefail` failed on a listing.
    The lines after the reader left now go nowhere, and the command's exit code is its own."""
    root, _ = _sqlite_project(tmp_path, fmt="csv")
    cli(root, "run", check=True)
    cli(root, "reexport", "openaq", check=True)
    for args, code in ((["run", "--dry-run"], 0), (["run", "--dry-run", "--json"], 0), (["status"], 0),
                       (["check"], 0), (["status", "--json"], 0), (["run", "--dry-run", "nope"], 2)):  # fmt: skip
        proc = subprocess.Popen(
            [SLUICEGATE, "-C", str(root), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        proc.stdout.close()  # the reader leaves before the first line
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == code and "Traceback" not in err and "Broken" not in err, (args, err)


def test_a_reader_that_leaves_a_pipe_shared_with_stderr_changes_no_exit_code(tmp_path: Path) -> None:
    """`sluicegate run --dry-run nope 2>&1 | head -1`: the error written to standard error, the
    same pipe as standard output, after the reader left raised BrokenPipeError, and the exit code
    was click's 1, not the command's 2."""
    root, _ = _sqlite_project(tmp_path, fmt="csv")
    for args, code in ((["run", "--dry-run", "nope"], 2), (["status"], 0), (["run", "--dry-run"], 0)):
        proc = subprocess.Popen(
            [SLUICEGATE, "-C", str(root), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert proc.stdout is not None
        proc.stdout.close()  # the reader of both leaves before the first line
        assert proc.wait(timeout=120) == code, args


def test_reexport_reads_the_time_key_as_mark_does(tmp_path: Path) -> None:
    """`reexport openaq day=2024-13-45` (a typo) printed "queued 0 partition(s)" and exit 0, and a
    day or hour written another way than the ledger stores it (`day=20240101`, `hour=2024-01-01T10:00`)
    matched no partition: the value was compared as text. Now it is read as `mark` reads it."""
    root, _ = _sqlite_project(tmp_path, zone="UTC")
    cli(root, "run", check=True)
    typo = cli(root, "reexport", "openaq", "location_id=1", "day=2024-13-45")
    assert typo.returncode == 2 and "Traceback" not in typo.stderr, typo.stdout + typo.stderr
    assert "day='2024-13-45' is not a valid day; use YYYY-MM-DD" in typo.stderr
    assert "queued 2 partition(s)" in cli(root, "reexport", "openaq", "day=20240101", check=True).stdout
    (tmp_path / "hours").mkdir()
    root, _ = _sqlite_project(tmp_path / "hours", zone="UTC")
    toml = root / "tasks" / "openaq" / "task.toml"
    text = toml.read_text().replace('grain = "day"', 'grain = "hour"\nname = "hour"')
    toml.write_text(text.replace("{day:", "{hour:").replace("%Y%m%d", "%Y%m%dT%H%z"))
    cli(root, "run", check=True)
    for hour in ("2024-01-01T10:00", "2024-01-01T10:30", "2024-01-01T10:00:00Z", "2024-01-01T11:00+01:00"):
        queued = cli(root, "reexport", "openaq", "location_id=2", f"hour={hour}", check=True)
        assert "queued 1 partition(s)" in queued.stdout, (hour, queued.stdout)
    bad = cli(root, "reexport", "openaq", "hour=10am")
    assert bad.returncode == 2 and "hour='10am' is not a valid hour" in bad.stderr, bad.stderr


def test_reexport_finds_its_partitions_when_the_select_returns_no_row(tmp_path: Path) -> None:
    """Once the source's rows were deleted, SQLite's select told no kind for location_id: `1` was
    read as the text '1', matched none of the partitions (the integer 1), and `reexport` said
    "queued 0" with exit 0. A key value now matches a partition holding it, as that partition holds it."""
    root, db = _sqlite_project(tmp_path, zone="UTC")
    cli(root, "run", check=True)
    db.conn.execute("DELETE FROM measurements")
    db.conn.commit()
    queued = cli(root, "reexport", "openaq", "location_id=1", check=True)
    assert "queued 2 partition(s)" in queued.stdout, queued.stdout
    assert "queued 0 partition(s)" in cli(root, "reexport", "openaq", "location_id=01", check=True).stdout


def test_keys_reordered_then_install_is_refused(tmp_path: Path) -> None:
    """`keys = ["location_id", "sensors_id"]` reordered, then `install`: the triggers recorded changes
    in the new order, which makes a partition's id, so the next change was a second partition of the
    exported one's file, parked ("would share the file ...; use every key whole in path": it did),
    and the change was never exported. install now refuses (exit 2) naming the order to keep; the
    triggers it left record in the ledger's order, and the change is exported."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), zone="UTC")
    toml = root / "tasks" / "openaq" / "task.toml"
    two = toml.read_text().replace('keys = ["location_id"]', 'keys = ["location_id", "sensors_id"]')
    two = two.replace("location-{location_id}", "location-{location_id}-{sensors_id}")
    toml.write_text(two.replace('{ location_id = "location_id" }', '{ location_id = "location_id", sensors_id = "sensor_id" }'))  # fmt: skip
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 48))
    assert "2 exported" in cli(root, "run", check=True).stdout
    toml.write_text(
        toml.read_text().replace('["location_id", "sensors_id"]', '["sensors_id", "location_id"]')
    )
    refused = cli(root, "install")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stdout + refused.stderr
    assert (
        "keys in the order ['location_id', 'sensors_id'], not ['sensors_id', 'location_id']" in refused.stderr
    )
    # mark and backfill make partition ids in the order of keys too: each was a second partition
    for command in ("mark openaq sensors_id=10 location_id=1 day=2024-01-01", "backfill openaq"):
        marked = cli(root, *command.split())
        assert marked.returncode == 2 and "Traceback" not in marked.stderr, marked.stdout + marked.stderr
        assert "not ['sensors_id', 'location_id']" in marked.stderr, marked.stderr
    db.insert(1, [dt.datetime(2024, 1, 1, 0, 30, tzinfo=UTC)])
    again = json.loads(cli(root, "run", "--json", check=True).stdout)[0]
    assert (again["exported"], again["failed"], again["rows"]) == (1, 0, 25), again
    status = json.loads(cli(root, "status", "--json", check=True).stdout)[0]
    assert (status["exported"], status["failed"]) == (2, 0), status


def test_changes_captured_before_a_key_was_added_are_set_aside_not_a_traceback(tmp_path: Path) -> None:
    """The inbox held changes the triggers recorded with keys ["location_id"]; after sensors_id was
    added to keys, every run folded them into partitions of one key value too few: a traceback
    (zip() argument 2 is shorter), exit 1, and no change exported again. They are left out with a
    warning saying to install and backfill, and the run goes on."""
    root, db = _sqlite_project(tmp_path, zone="UTC")
    toml = root / "tasks" / "openaq" / "task.toml"
    two = toml.read_text().replace('keys = ["location_id"]', 'keys = ["location_id", "sensors_id"]')
    two = two.replace("location-{location_id}", "location-{location_id}-{sensors_id}")
    toml.write_text(two.replace('{ location_id = "location_id" }', '{ location_id = "location_id", sensors_id = "sensor_id" }'))  # fmt: skip
    for command in ("run --dry-run", "run"):
        result = cli(root, *command.split())
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
        assert "hold other keys than location_id, sensors_id" in result.stderr, result.stderr
    cli(root, "install", check=True)
    db.insert(1, [dt.datetime(2024, 1, 1, 0, 30, tzinfo=UTC)])
    again = json.loads(cli(root, "run", "--json", check=True).stdout)[0]
    assert (again["exported"], again["failed"]) == (1, 0), again


def test_limit_and_openaq_environment(tmp_path: Path) -> None:
    root, _ = _sqlite_project(tmp_path, fmt="csv.gz")
    target = tmp_path / "openaq-style"
    env = {
        "LIMIT": "3",
        "WRITE_FILE_LOCATION": "local",
        "LOCAL_SAVE_DIRECTORY": str(target),
        "WRITE_FILE_FORMAT": "csv",
    }
    # The task declares no format, so WRITE_FILE_FORMAT (the project default) applies.
    (root / "sluicegate.toml").write_text(
        (root / "sluicegate.toml").read_text().replace('format = "csv.gz"', "")
    )
    result = cli(root, "run", "--json", env=env, check=True)
    assert json.loads(result.stdout)[0]["exported"] == 3
    written = files(target)
    assert len(written) == 3 and all(p.suffix == ".csv" for p in written)
    assert files(tmp_path / "out") == []


def test_broken_task_config_exits_2_and_names_the_file(tmp_path: Path) -> None:
    root, _ = _sqlite_project(tmp_path, fmt="csv")
    broken = root / "tasks" / "broken"
    broken.mkdir()
    (broken / "task.toml").write_text(
        'keys = ["location_id"]\npath = "{location_id}/{day}.csv"\n[time]\ncolumn = "datetime"\ngrain = "week"\n'
    )
    (broken / "select.sql").write_text("SELECT 1")
    check = cli(root, "check")
    assert check.returncode == 2
    assert (
        f"{broken / 'task.toml'} [time] grain: 'week' is not supported; use 'day' or 'hour'" in check.stderr
    )
    assert "Traceback" not in check.stderr
    run = cli(root, "run", "--json")
    assert run.returncode == 2  # the healthy task still ran
    assert json.loads(run.stdout)[0]["exported"] == 4
    assert "task broken skipped" in run.stderr
    named = cli(root, "run", "broken")
    assert named.returncode == 2 and "grain" in named.stderr and "Traceback" not in named.stderr
    verbose = cli(root, "-v", "run", "broken")
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr


def test_run_naming_a_broken_task_runs_the_others_it_names(tmp_path: Path) -> None:
    """`run openaq broken` ran nothing: the broken folder's error stopped the run of openaq too,
    though `run` (all tasks) skips it and runs the others. Named, it is skipped the same way."""
    root, _ = _sqlite_project(tmp_path, fmt="csv")
    broken = root / "tasks" / "broken"
    broken.mkdir()
    (broken / "task.toml").write_text('keys = ["location_id"]\n[time]\ncolumn = "datetime"\ngrain = "week"\n')
    ran = cli(root, "run", "openaq", "broken", "--json")
    assert ran.returncode == 2 and "task broken skipped" in ran.stderr, ran.stderr
    assert f"{broken / 'task.toml'} [time] grain: 'week' is not supported" in ran.stderr
    assert [s["exported"] for s in json.loads(ran.stdout)] == [4]
    alone = cli(root, "run", "broken")  # nothing else named: refused, as before
    assert alone.returncode == 2 and "error: " in alone.stderr and "grain" in alone.stderr
    unknown = cli(root, "run", "openaq", "nosuch")  # a name no folder has is still refused
    assert unknown.returncode == 2 and "no task named 'nosuch'" in unknown.stderr


def test_check_reports_query_and_column_problems(tmp_path: Path) -> None:
    root, _ = _sqlite_project(tmp_path, fmt="csv")
    assert cli(root, "check").returncode == 0
    task = root / "tasks" / "openaq"
    (task / "task.toml").write_text(
        (task / "task.toml").read_text().replace('column = "datetime"', 'column = "measured_at"')
    )
    result = cli(root, "check")
    assert result.returncode == 2
    assert "[time] column: 'measured_at' is not a column of select.sql's result" in result.stderr
    (task / "select.sql").write_text("SELECT nope FROM nowhere")
    result = cli(root, "check")
    assert result.returncode == 2 and "select.sql: the query failed" in result.stderr


def test_a_capture_column_typo_on_sqlite_fails_check_and_install(tmp_path: Path) -> None:
    """SQLite reads "datetme" (no such column) as a string: check and install passed, and the
    trigger then broke every INSERT of the application with "no such column: NEW.datetme"."""
    root, db = _sqlite_project(tmp_path, fmt="csv")
    toml = root / "tasks" / "openaq" / "task.toml"
    good = toml.read_text()
    typos = (('time = "datetme"', "time"), ('{ location_id = "locationid" }', "keys.location_id"))
    for month, (typo, field) in enumerate(typos, start=2):
        toml.write_text(good.replace('time = "datetime"' if field == "time" else '{ location_id = "location_id" }',
                                     typo))  # fmt: skip
        for command in ("check", "install"):
            result = cli(root, command)
            assert result.returncode == 2, (command, result.stdout, result.stderr)
            assert (
                f"[capture] {field}:" in result.stderr and "is not a column of measurements" in result.stderr
            )
            assert "Traceback" not in result.stderr
        db.insert(1, hours(dt.datetime(2024, month, 1, tzinfo=UTC), 1))  # the application still writes
    toml.write_text(good.replace('table = "measurements"', 'table = "measurement"'))
    result = cli(root, "install")
    assert result.returncode == 2 and "'measurement' is not a table of the source" in result.stderr


def test_a_schema_qualified_capture_table_on_sqlite_is_checked_installed_and_captured(tmp_path: Path) -> None:
    """`table = "main.measurements"` (a name the triggers quote as "main"."measurements") was looked
    up as one table name: install refused it as "not a table of the source"."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt="csv")
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text(toml.read_text().replace('table = "measurements"', 'table = "main.measurements"'))
    db = Db(url)
    db.location(1, "UTC")
    for command in ("install", "check"):
        result = cli(root, command)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
    assert "are not installed" not in result.stdout + result.stderr  # check finds them on the table
    db.insert(1, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 24))  # captured by the installed triggers
    [summary] = json.loads(cli(root, "run", "--json", check=True).stdout)
    assert (summary["exported"], summary["rows"]) == (1, 24) and len(files(tmp_path / "out")) == 1
    # Another schema cannot hold a table of a SQLite source: named, exit 2 (was "unknown database")
    toml.write_text(toml.read_text().replace('table = "main.measurements"', 'table = "aux.measurements"'))
    for command in ("check", "install"):
        result = cli(root, command)
        assert (
            result.returncode == 2
            and "[capture] table: 'aux.measurements' is in schema 'aux'" in result.stderr
        )


def test_a_scan_key_typo_on_sqlite_marks_no_partition_named_after_it(tmp_path: Path) -> None:
    """The scan read SELECT DISTINCT "locationid" as the text 'locationid': a partition
    location_id=locationid was marked and exported empty, and the real ones never were."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt="csv",
                         capture="scan")  # fmt: skip
    db = Db(url)
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 24))
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text(
        toml.read_text().replace('{ location_id = "location_id" }', '{ location_id = "locationid" }')
    )
    result = cli(root, "run")
    assert (
        result.returncode == 2 and "[capture] keys.location_id: 'locationid'" in result.stdout + result.stderr
    )
    assert "Traceback" not in result.stderr and not files(tmp_path / "out")
    assert not [p for p in operations.status(load(root), ["openaq"]) if p.get("pending")]


def test_a_sqlite_url_with_two_slashes_is_refused_not_opened_at_the_root(tmp_path: Path) -> None:
    """sqlite://x.db opened /x.db, at the root of the file system, and made the ledger there."""
    name = f"sluicegate-test-{tmp_path.name}.db"
    root, _ = _sqlite_project(tmp_path, fmt="csv")
    settings = root / "sluicegate.toml"
    settings.write_text(settings.read_text().replace(f"sqlite:///{tmp_path / 's.db'}", f"sqlite://{name}"))
    assert f"sqlite://{name}" in settings.read_text()
    for command in ("check", "run", "status"):
        result = cli(root, command)
        assert result.returncode == 2 and "a SQLite URL has three slashes" in result.stderr, result.stderr
    assert not (Path("/") / name).exists()


def test_a_sqlite_url_with_options_is_refused_not_made_a_file_of_that_name(tmp_path: Path) -> None:
    """sqlite:////x.db?mode=ro created a new, empty ledger in a file named "x.db?mode=ro"."""
    root, _ = _sqlite_project(tmp_path, fmt="csv")
    settings = root / "sluicegate.toml"
    url = f"sqlite:///{tmp_path / 's.db'}"
    settings.write_text(settings.read_text().replace(url, f"{url}?mode=ro"))
    for command in ("check", "run", "status"):
        result = cli(root, command)
        assert (
            result.returncode == 2 and "reads no options in a SQLite URL, and '?mode=ro'" in result.stderr
        ), result.stderr
    assert not list(tmp_path.glob("*?mode=ro"))


def test_a_typod_sqlite_source_path_is_refused_not_created(tmp_path: Path) -> None:
    """A typo in [source] url made a new, empty database (the ledger's tables in it), and the
    run blamed each task's select.sql for the missing table."""
    root, _ = _sqlite_project(tmp_path, fmt="csv")
    settings = root / "sluicegate.toml"
    settings.write_text(
        settings.read_text().replace(f"sqlite:///{tmp_path / 's.db'}", f"sqlite:///{tmp_path / 'S.db'}")
    )
    for command in ("run", "check", "status"):
        result = cli(root, command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert f"SQLite database {tmp_path / 'S.db'} does not exist" in result.stdout + result.stderr
        assert "select.sql" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "S.db").exists() and files(tmp_path / "out") == []


def test_status_and_tasks_exit_2_when_a_task_folder_is_broken(tmp_path: Path) -> None:
    """They listed the broken task and exited 0, so a monitoring check never saw it."""
    root, _ = _sqlite_project(tmp_path, fmt="csv")
    assert cli(root, "status").returncode == 0 and cli(root, "tasks").returncode == 0
    (root / "tasks" / "broken").mkdir()
    (root / "tasks" / "broken" / "select.sql").write_text("SELECT 1")
    for command in (["status"], ["status", "--json"], ["tasks"], ["tasks", "--json"]):
        result = cli(root, *command)
        assert result.returncode == 2 and "broken" in result.stdout and "openaq" in result.stdout, command


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    root, _ = _sqlite_project(tmp_path, fmt="csv")
    assert cli(root, "run", "--limit", "0").returncode == 2
    assert cli(root, "run", "--max-runtime", "soon").returncode == 2
    for option in ("--every", "--max-runtime"):  # `--every 0s` ran once, as if not given
        zero = cli(root, "run", option, "0s")
        assert zero.returncode == 2 and "give a duration longer than 0s" in zero.stderr
    bad = cli(root, "mark", "openaq", "location=1")
    assert bad.returncode == 2 and "keys are: location_id, day" in bad.stderr
    # A day whose window would leave Python's years (it was an OverflowError with a traceback).
    for day in ("9999-12-31", "0001-01-01"):
        far = cli(root, "mark", "openaq", "location_id=1", f"day={day}")
        assert far.returncode == 2 and "Traceback" not in far.stderr, far.stderr
        assert (
            f"day='{day}' is outside the periods sluicegate can export (0001-01-03 to 9999-12-29)"
            in far.stderr
        )
    assert cli(root, "run", "nosuchtask").returncode == 2
    assert cli(tmp_path / "empty", "status").returncode == 2
    # ... and a window without --ignore-watermark said to add it, which only led to this refusal.
    options = (
        ["openaq", "--entity", "1"],
        ["--type", "daily"],
        ["--tag", "nightly"],
        ["--time-min", "2024-05-01"],
        ["--ignore-watermark"],
    )
    for args in options:  # were ignored
        ignored = cli(root, "run", *args)
        assert (
            ignored.returncode == 2
            and "apply to incremental tasks only, and a partitioned task" in ignored.stderr
            and f"(`sluicegate -C {root} reexport` re-exports" in ignored.stderr  # as typed from here
        )
    for command in ("backfill", "reexport"):  # a range that holds nothing did nothing, exit 0
        backwards = cli(root, command, "openaq", "--time-min", "2024-05-03", "--time-max", "2024-05-01")
        assert backwards.returncode == 2, (command, backwards.stdout, backwards.stderr)
        assert "--time-min/time_min 2024-05-03T00:00:00+00:00 must be before" in backwards.stderr


def test_secrets_never_reach_output(tmp_path: Path, pg_url: str, pg_password: str) -> None:
    root = write_project(tmp_path / "proj", source=pg_url, destination=str(tmp_path / "out"), fmt="csv")
    db = Db(pg_url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 1, 1, tzinfo=UTC), 24))
    ok = cli(root, "-v", "run", check=True)
    assert pg_password not in ok.stdout + ok.stderr and "exporter:***@" in ok.stderr
    wrong = pg_url.replace(pg_password, pg_password + "-wrong")
    failed = cli(root, "-v", "run", env={"SLUICEGATE_SOURCE__URL": wrong, "SLUICEGATE_LEDGER__URL": wrong})
    assert failed.returncode == 1
    assert pg_password not in failed.stdout + failed.stderr
    assert "password authentication failed" in failed.stderr
    tasks = cli(root, "tasks", "--json", env={"SLUICEGATE_SOURCE__URL": pg_url}, check=True)
    assert pg_password not in tasks.stdout


def test_demo_builds_a_working_project(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    result = cli(
        tmp_path, "demo", str(folder), "--rows", "20000", "--locations", "30", check=True, timeout=300
    )
    assert "sluicegate demo" in result.stdout
    exported = files(folder / "exports")
    assert exported and all(p.name.endswith(".csv.gz") for p in exported)
    zones = {"Asia/Kolkata", "Australia/Adelaide", "Pacific/Chatham", "America/Chicago", "Europe/Brussels"}
    assert zones <= {
        z
        for (z,) in Db(f"sqlite:///{folder / 'measurements.db'}").rows(
            "SELECT DISTINCT timezone FROM locations"
        )
    }
    status = json.loads(cli(folder, "status", "--json", check=True).stdout)[0]
    assert status["exported"] == len(exported) and status["failed"] == 0 and status["waiting"] > 0
    sample = exported[0]
    assert read_csv(sample)
    written = sample.stat().st_mtime_ns
    loc = sample.parent.parent.parent.name.split("=")[1]
    day = sample.name.split("-")[-1].split(".")[0]
    cli(folder, "mark", "openaq", f"location_id={loc}", f"day={day[:4]}-{day[4:6]}-{day[6:]}", check=True)
    again = json.loads(cli(folder, "run", "--json", check=True).stdout)[0]
    # The re-marked partition's rows did not change: its upload is skipped and the file stays.
    assert again["unchanged"] == 1 and again["failed"] == 0 and sample.stat().st_mtime_ns == written
    # Anything exported besides is a local day that closed since the demo ran (the demo's zones
    # pass midnight at many times of the day, e.g. 03:00 UTC in America/Sao_Paulo).
    assert again["exported"] <= status["waiting"]
    assert cli(tmp_path, "demo", str(folder)).returncode == 2  # will not clobber an existing project


def test_init_creates_a_project_that_check_understands(tmp_path: Path) -> None:
    folder = tmp_path / "new"
    cli(tmp_path, "init", str(folder), check=True)
    assert (folder / "sluicegate.toml").exists() and (folder / "tasks/openaq/select.sql").exists()
    result = cli(folder, "check")  # no database yet: check says where it looked
    assert (
        result.returncode == 2
        and f"SQLite database {folder / 'measurements.db'} does not exist" in result.stderr
    )
    assert not (folder / "measurements.db").exists()
    assert cli(tmp_path, "init", str(folder)).returncode == 2


def test_a_project_without_a_tasks_folder_is_empty_and_check_says_so(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "sluicegate.toml").write_text(
        '[source]\nurl = "sqlite:///m.db"\n[destination]\nurl = "out"\n[defaults]\nworkers = "auto"\n'
    )
    status = cli(root, "status")
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stderr
    checked = cli(root, "check")
    assert checked.returncode == 0, checked.stderr
    assert f"warning: {root} has no tasks: add a folder per task" in checked.stderr


def test_workers_must_be_a_whole_number_or_auto(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    toml = '[source]\nurl = "sqlite:///m.db"\n[destination]\nurl = "out"\n[defaults]\nworkers = {}\n'
    (root / "sluicegate.toml").write_text(toml.format('"many"'))
    proc = cli(root, "status")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert (
        "[defaults] workers: 'many' is not a whole number; use one (exporters per run), or \"auto\""
        in proc.stderr
    )
    (root / "sluicegate.toml").write_text(toml.format(0))
    proc = cli(root, "status")
    assert proc.returncode == 2 and "[defaults] workers: 0 is too small; use at least 1" in proc.stderr


def test_check_warns_when_the_role_is_named_like_the_ledger_schema(tmp_path: Path, pg_url: str) -> None:
    root = write_project(tmp_path / "proj", source=pg_url, destination=str(tmp_path / "out"), fmt="csv")
    Db(pg_url)
    assert cli(root, "check").returncode == 0
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace("[ledger]", '[ledger]\nschema = "exporter"'))
    result = cli(root, "check")
    assert result.returncode == 2 and "is also the name of the database role" in result.stderr


def test_dry_run_keeps_to_its_limit_and_does_not_count_waiting_days(tmp_path: Path) -> None:
    """Changes in the trigger inbox were listed past `--limit`, and a change to today's
    (incomplete) day was counted as "would be exported"."""
    root, db = _sqlite_project(tmp_path, fmt="csv")  # 2 locations x 2 days in the inbox
    today = dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    db.insert(1, [today])
    plan = cli(root, "run", "--dry-run", check=True)
    assert (
        "openaq: 4 partition(s) would be exported; 1 more wait until their period is complete" in plan.stdout
    )
    limited = cli(root, "run", "--dry-run", "--limit", "2", "--json", check=True)
    [summary] = json.loads(limited.stdout)
    assert len(summary["plan"]) == 2 and not any(e["waiting"] for e in summary["plan"])
    assert summary["plan_cut"] is True
    # the count of a listing cut at --limit is a floor, and says so (it read "2 would be exported")
    text = cli(root, "run", "--dry-run", "--limit", "2", check=True).stdout
    assert "openaq: at least 2 partition(s) would be exported (the first 2 listed" in text
    assert files(tmp_path / "out") == []
    db.close()


def test_dry_run_limit_counts_only_partitions_to_export_not_waiting_ones(tmp_path: Path) -> None:
    """A change to today's day, first in the inbox, used up `--limit 1`: the plan showed nothing
    that would be exported."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"))
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, [dt.datetime.now(UTC).replace(minute=0, second=0, microsecond=0)])
    db.insert(1, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC)])
    [summary] = json.loads(cli(root, "run", "--dry-run", "--limit", "1", "--json", check=True).stdout)
    assert sorted(e["waiting"] for e in summary["plan"]) == [False, True]
    db.close()


def test_status_and_check_say_when_partitions_were_cut_in_another_zone(tmp_path: Path) -> None:
    """After the task's `zone` changed (UTC to Asia/Tokyo), nothing said that the files of the
    days already exported overlap the new zone's days, nor that `reexport` re-cuts them. Status
    counts them and check warns (exit 0: keeping the old files is a choice); a reexport clears
    both, also for days whose windows are the same in the new zone (UTC to Etc/UTC)."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), zone="UTC")
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, hours(dt.datetime(2024, 5, 1, tzinfo=UTC), 30), value=1.0)
    assert cli(root, "run").returncode == 0
    toml = root / "tasks" / "openaq" / "task.toml"
    for zone in ("Etc/UTC", "Asia/Tokyo"):  # the same windows, then others
        toml.write_text(
            toml.read_text().replace(toml.read_text().split('zone = "')[1].split('"')[0], zone, 1)
        )
        n = json.loads(cli(root, "status", "--json").stdout)[0]["exported"]
        status = cli(root, "status")
        assert (
            f"{n} partition(s) cut in another zone than the task's ('sluicegate -C {root} reexport openaq'"
            " re-cuts them)"
            in status.stdout
        ), status.stdout
        assert json.loads(cli(root, "status", "--json").stdout)[0]["other_zone"] == n
        check = cli(root, "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert (
            f"warning: task openaq: {n} partition(s) were cut in another zone than its zone {zone}"
            in check.stderr
        ), check.stderr
        assert cli(root, "reexport", "openaq").returncode == 0
        assert "another zone" not in cli(root, "status").stdout
        assert "another zone" not in cli(root, "check").stderr
        assert cli(root, "run").returncode == 0
    db.close()


def test_a_global_option_after_the_command_says_where_it_goes(tmp_path: Path) -> None:
    """`sluicegate run -C proj` said only "No such option '-C'", though -C is an option."""
    for args, hint in (
        (["run", "-C", str(tmp_path)], "sluicegate -C FOLDER run ..."),
        (["status", "-v"], "sluicegate -v status ..."),
        (["watermark", "list", "x", "--project", str(tmp_path)], "sluicegate -C FOLDER watermark ..."),
    ):
        proc = subprocess.run([SLUICEGATE, *args], capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"is a global option and goes before the command: {hint}" in proc.stderr, proc.stderr
