"""Things that must be refused: leaked secrets, unsafe schema names, unusable path values,
broken trigger tasks at install; and SQLite's time resolution, stated and consistent."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from sluicegate import engine, operations
from sluicegate.destinations.local import LocalDestination
from sluicegate.destinations.s3 import S3Destination
from sluicegate.engine import RunOptions
from sluicegate.exceptions import BadPartitionValue
from sluicegate.specs import DestinationSettings
from support import Db, assert_one_type_twin_parked, cli, files, load, read_csv, typed_project, write_project

UTC = dt.UTC
DOCS = Path(__file__).resolve().parents[2] / "docs"


# ----------------------------------------------------------------- 12: one masker for every secret


@pytest.mark.parametrize(
    "url,secret",
    [
        ("postgresql://u@127.0.0.1:1/db?password=hunter2", "hunter2"),
        ("postgresql://u:hunter2@h/db", "hunter2"),
        ("postgresql://u:hun%40ter2@h/db", "hun%40ter2"),
        ("postgresql://h/db?sslmode=require&sslpassword=hunter2", "hunter2"),
        ("postgresql://h/db?aws_secret_access_key=hunter2&x=1", "hunter2"),
        ("postgresql://h/db?api_token=hunter2", "hunter2"),
        ("mariadb://u@h/db?PASSWORD=hunter2", "hunter2"),
        # libpq takes a raw ? or # in the password as part of it (the URL connects)
        ("postgresql://u:hun?ter2@h/db", "ter2"),
        ("postgresql://u:hun#ter2@h:5432/db?sslmode=require", "ter2"),
        ("postgresql://u:hun?ter2@h", "ter2"),
        # a raw / (base64 passwords have them) leaves a URL no driver reads, but it is printed
        ("postgresql://u:hun/ter2@h:5432/db", "ter2"),
        ("mariadb://u:h/u?n#ter2@h/db", "ter2"),
    ],
)
def test_mask_url_hides_userinfo_passwords_and_secret_parameters(url: str, secret: str) -> None:
    from sluicegate.masking import mask_url, scrub

    masked = mask_url(url)
    assert secret not in masked and "***" in masked
    assert masked.split("://")[0] == url.split("://")[0]
    # A driver message that repeats the secret loses it too, and so does a conninfo string.
    assert secret not in scrub(f"connection to {url} failed (password={secret})", url)
    assert "hunter2" not in scrub("host=h dbname=db password=hunter2 user=u")


def test_mask_url_keeps_what_is_not_secret() -> None:
    from sluicegate.masking import mask_url, scrub

    url = "postgresql://u@h:5432/db?sslmode=require&application_name=x"
    assert mask_url(url) == url
    for url in (
        "postgresql://h:5432/my@db",
        "postgresql://[::1]:5432/a@b",
        "https://h/a@b?c=d",
        "s3://b/a:b@c",
    ):
        assert mask_url(url) == url
    assert scrub('use a list of column names, e.g. keys = ["location_id"]') == (
        'use a list of column names, e.g. keys = ["location_id"]'
    )


def test_a_short_password_is_masked_where_it_stands_alone_and_leaves_words_whole() -> None:
    """A one- or two-letter password replaced everywhere garbled every error that went through the
    masker ("t***ble" for "table" with the password "a"); it is masked where it stands alone."""
    from sluicegate.masking import scrub

    url = "postgresql://u:ab@h/db"
    message = 'relation "tabby" has no column ab_id; password ab rejected for "u:ab@h" (ab)'
    assert (
        scrub(message, url)
        == 'relation "tabby" has no column ab_id; password *** rejected for "u:***@h" (***)'
    )
    long = "postgresql://u:s3cretpw@h/db"  # a long one goes wherever it appears, even inside a word
    assert scrub("xs3cretpwx and s3cretpw", long) == "x***x and ***"


def test_a_short_password_with_a_sign_at_an_end_is_masked_next_to_a_word() -> None:
    """A short password was masked only between non-word characters, also at an end of it that is
    a sign: "#1" (or "-ab") glued to a word ("key#1", "x-ab") went out in the clear. A sign cannot
    be inside a word, so only an end that is a letter, digit or _ asks for a word boundary."""
    from sluicegate.masking import scrub

    assert scrub("bad key#1 or #1x or (#1)", "postgresql://u:%231@h/db") == "bad key*** or #1x or (***)"
    assert scrub("x-ab and x-abc", "postgresql://u:-ab@h/db") == "x*** and x-abc"
    assert scrub("tab!! !!", "postgresql://u:!!@h/db") == "tab*** ***"


def test_a_password_in_the_query_string_never_reaches_the_terminal(tmp_path: Path) -> None:
    root = write_project(
        tmp_path / "p", source=f"sqlite:///{tmp_path / 's.db'}", destination=str(tmp_path / "o")
    )
    env = {"SLUICEGATE_SOURCE__URL": "postgresql://u@127.0.0.1:1/db?password=hunter2"}
    for args in (("status",), ("-v", "status"), ("-v", "run")):
        proc = cli(root, *args, env=env)
        assert proc.returncode != 0
        assert "hunter2" not in proc.stdout + proc.stderr, args
        assert "password=***" in proc.stderr


def test_a_password_the_driver_echoes_is_masked_in_the_verbose_traceback(tmp_path: Path) -> None:
    """libpq repeats a password it cannot parse ("invalid percent-encoded token: ..."): the one-line
    error masked it, but -v printed the traceback of the driver's exception as it was."""
    root = write_project(
        tmp_path / "p", source=f"sqlite:///{tmp_path / 's.db'}", destination=str(tmp_path / "o")
    )
    env = {"SLUICEGATE_SOURCE__URL": "postgresql://u:hun%ZZter2@127.0.0.1:1/db"}
    for args in (("status",), ("-v", "status"), ("-v", "run")):
        proc = cli(root, *args, env=env)
        assert proc.returncode != 0
        assert "ter2" not in proc.stdout + proc.stderr, args
        assert "invalid percent-encoded token" in proc.stderr, args


@pytest.mark.parametrize(
    "url", ["mariadb://u:hun/ter2@127.0.0.1:1/db", "mariadb://u:hun?ter2@h/db", "mariadb://u:hunter2@h:x/db"]
)
def test_a_mariadb_url_whose_port_is_not_a_number_is_a_config_error(tmp_path: Path, url: str) -> None:
    """urlsplit reads what follows the first ':' of u:hun/ter2 as the port: the run ended with
    ValueError's traceback (exit 1, no -v), which named a piece of the password."""
    root = write_project(
        tmp_path / "p", source=f"sqlite:///{tmp_path / 's.db'}", destination=str(tmp_path / "o")
    )
    proc = cli(root, "status", env={"SLUICEGATE_SOURCE__URL": url})
    assert proc.returncode == 2, proc.stderr
    assert (
        "Traceback" not in proc.stderr
        and "ter2" not in proc.stdout + proc.stderr
        and "hun" not in proc.stderr
    )
    assert "percent-encode" in proc.stderr


@pytest.mark.parametrize("json_lines", [False, True])
def test_a_logged_traceback_is_masked_like_its_message(json_lines: bool) -> None:
    """A record logged with exc_info (engine's -v "task failed", the service's crashes) printed the
    driver's exception untouched: the filter masked only the message."""
    import io
    import logging

    from sluicegate.cli.serve import JsonLines
    from sluicegate.masking import ScrubFilter

    url = "postgresql://u:hun%ZZter2@127.0.0.1:1/db"
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonLines() if json_lines else logging.Formatter("%(message)s"))
    handler.addFilter(ScrubFilter(url))
    logger = logging.getLogger("sluicegate.test_masked_traceback")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError('invalid percent-encoded token: "hun%ZZter2"')
        except ValueError:
            logger.error("task failed", exc_info=True)
    finally:
        logger.removeHandler(handler)
    assert "ter2" not in out.getvalue()
    assert "ValueError: invalid percent-encoded token" in out.getvalue()


# ----------------------------------------------------------------- 13: the ledger schema name


@pytest.mark.parametrize("schema", ["sch%s", "x.", "a; DROP TABLE t", "1abc", "x" * 64, ""])
def test_an_unsafe_ledger_schema_name_is_refused_with_exit_2(tmp_path: Path, schema: str) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "p", source=url, destination=str(tmp_path / "o"))
    Db(url)
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace("[ledger]", f"[ledger]\nschema = {json.dumps(schema)}"))
    for command in ("install", "run", "check"):
        proc = cli(root, command)
        assert proc.returncode == 2, (command, proc.stderr)
        assert "[ledger] schema" in proc.stderr and "plain identifier" in proc.stderr
        assert "Traceback" not in proc.stderr
    via_env = cli(root, "status", env={"SLUICEGATE_LEDGER__SCHEMA": "sch%s"})
    assert via_env.returncode == 2 and "plain identifier" in via_env.stderr


# ----------------------------------------------------------------- 14: path values


def _site_project(tmp_path: Path) -> tuple[Path, Db]:
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), capture="explicit")
    task = root / "tasks" / "bysite"
    task.mkdir()
    (task / "task.toml").write_text(
        'keys = ["site"]\npath = "{site}/{day}.csv"\nformat = "csv"\n[time]\ncolumn = "datetime"\nzone = "UTC"\n'
    )
    (task / "select.sql").write_text(
        "SELECT l.name AS site, m.datetime, m.value FROM measurements m JOIN locations l USING (location_id)"
    )
    return root, Db(url)


def test_control_and_format_characters_and_overlong_values_are_parked_with_a_short_reason(
    tmp_path: Path,
) -> None:
    root, db = _site_project(tmp_path)
    names = {1: "good", 2: "next\u0085line", 3: "evil\u202etxt.exe", 4: "x" * 5000, 5: "zero\u200bwidth"}
    for loc, name in names.items():
        db.location(loc, "UTC", name=name)
        db.insert(loc, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC)])
    project = load(root)
    for name in names.values():
        operations.mark(project, "bysite", {"site": name, "day": "2024-01-01"})
    [summary] = engine.run(project, ["bysite"])
    assert (summary.exported, summary.failed) == (1, 4)
    assert [p.name for p in files(tmp_path / "out")] == ["2024-01-01.csv"]
    [status] = operations.status(load(root), ["bysite"])
    assert status["failed"] == 4
    errors = {f["error"] for f in status["failures"]}
    assert all(len(e) < 300 for e in errors), errors  # the reason, not the value, fills the message
    assert {f["attempts"] for f in status["failures"]} == {1}  # terminal: parked at once, not retried
    joined = " ".join(errors)
    for code in ("U+0085", "U+202E", "U+200B"):
        assert code in joined
    assert "5,000" in joined and "255-byte" in joined


def test_destinations_check_their_own_length_limits(tmp_path: Path) -> None:
    local = LocalDestination(str(tmp_path / "out"))
    local.check_path("a/" + "b" * 255)
    with pytest.raises(BadPartitionValue, match="255-byte"):
        local.check_path("a/" + "b" * 256)
    with pytest.raises(BadPartitionValue, match="4,095-byte"):
        local.check_path("/".join(["c" * 200] * 25))
    s3 = S3Destination(DestinationSettings(url="s3://bucket/prefix", endpoint_url="http://127.0.0.1:9"))
    s3.check_path("k" * (1024 - len("prefix/")))
    with pytest.raises(BadPartitionValue, match="1,024-byte"):
        s3.check_path("k" * (1025 - len("prefix/")))


@pytest.mark.parametrize(
    "path,grain,zone,shared",
    [
        ("{site}/{day:%Y-%m}.csv", "day", "UTC", "the days 2023-01-01 and 2023-01-02"),
        ("{site}/{day:%m-%d}.csv", "day", "UTC", "the days 2023-01-01 and 2024-01-01"),
        ("{site[0]}/{day}.csv", "day", "UTC", "site='ab1' and site='ab2'"),
        ("{site:.6}/{day}.csv", "day", "UTC", "would share the file 'nnnnnn/"),
        ("{site:.40}/{day}.csv", "day", "UTC", "site='nnnnnnnn"),
        ("{site}/{hour:%Y%m%d%H}.csv", "hour", "Europe/Brussels", "2023-10-29T02:00:00+02:00 and"),
        ("{site}/{hour:%Y%m%d%H}.csv", "hour", None, "2023-11-05T01:00:00-04:00 and"),
    ],
)
def test_a_path_template_that_names_two_partitions_alike_is_refused_at_load(
    tmp_path: Path, path: str, grain: str, zone: str | None, shared: str
) -> None:
    """``{site}/{day:%Y-%m}`` used every key, so it passed; then each day of a month overwrote
    the month's one file while the ledger recorded every day as exported."""
    root, _ = _site_project(tmp_path)
    zone_line = f'zone = "{zone}"' if zone else 'zone_sql = "SELECT name, timezone FROM locations"'
    (root / "tasks/bysite/task.toml").write_text(
        f'keys = ["site"]\npath = "{path}"\nformat = "csv"\n[time]\ncolumn = "datetime"\n'
        f'grain = "{grain}"\n{zone_line}\n'
    )
    proc = cli(root, "check")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "would share the file" in out and shared in out, out


def test_partitions_of_one_batch_that_render_to_one_file_park_the_later_ones(tmp_path: Path) -> None:
    """A key cut by a format spec past the sampled values' length escapes the check at load; the
    batch still never writes two partitions to one file."""
    root, db = _site_project(tmp_path)
    (root / "tasks/bysite/task.toml").write_text(
        'keys = ["site"]\npath = "{site:.60}/{day}.csv"\nformat = "csv"\n[time]\ncolumn = "datetime"\nzone = "UTC"\n'
    )
    north = "north" + "-" * 55
    for loc, name in {1: north + "1", 2: north + "2"}.items():
        db.location(loc, "UTC", name=name)
        db.insert(loc, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC)])
    project = load(root)
    for name in (north + "1", north + "2"):
        operations.mark(project, "bysite", {"site": name, "day": "2024-01-01"})
    [summary] = engine.run(project, ["bysite"])
    assert (summary.exported, summary.failed) == (1, 1), summary.errors
    assert f"would share the file '{north}/2024-01-01.csv'" in summary.errors[0]
    [written] = files(tmp_path / "out")
    assert [row["site"] for row in read_csv(written)] == [north + "1"]  # the first partition's row


@pytest.mark.parametrize(("batch_size", "runs"), [(1, 1), (500, 1), (500, 2)])
def test_partitions_whose_keys_differ_only_in_type_never_replace_each_others_file(
    tmp_path: Path, batch_size: int, runs: int
) -> None:
    """SQLite's untyped column holds 1 and '1': partitions [1,"2024-11-02"] and ["1","2024-11-02"]
    both render 1/20241102.csv. Only one batch was checked, so when they were claimed in different
    batches the second file replaced the first and both were recorded exported: row a or b was in
    no file (and in one batch the advice was to use every key whole in path, which it does)."""
    root = typed_project(tmp_path, batch_size)
    # One batch, or one batch per partition (the first file still in flight), or one run per partition.
    summaries = [
        s for _ in range(runs) for s in engine.run(load(root), ["typed"], RunOptions(limit=3 - runs))
    ]
    assert (sum(s.exported for s in summaries), sum(s.failed for s in summaries)) == (1, 1)
    [status] = operations.status(load(root), ["typed"])
    [failure] = status["failures"]
    assert failure["attempts"] == 1  # terminal: parked at once, not retried
    assert_one_type_twin_parked(failure, tmp_path / "out")


def test_a_long_name_still_gets_a_temp_file_beside_its_target(tmp_path: Path) -> None:
    """A 250-byte name would overflow NAME_MAX once the temp suffix is added: the temp file takes
    a digest of the name, and the file is published under its real name."""
    local = LocalDestination(str(tmp_path / "out"))
    name = "n" * 250 + ".csv"
    staged = local.stage(name)
    staged.file.write(b"a,b\n")
    local.publish(staged)
    local.sync()
    assert (tmp_path / "out" / name).read_bytes() == b"a,b\n"


def test_only_sluicegate_temp_names_are_cleaned_or_hidden_and_no_file_may_take_one(tmp_path: Path) -> None:
    """Stale-file cleanup removed any name holding ".sluicegate-" and ending in ".tmp": a
    partition value "r.sluicegate-1.tmp" got its published file deleted (and hidden from
    listings) while the ledger said exported."""
    out = tmp_path / "out"
    first = LocalDestination(str(out), stale_after=0)
    for name in ("day/r.sluicegate-1.tmp", "day/a.csv"):
        staged = first.stage(name)
        staged.file.write(b"x\n")
        first.publish(staged)
    first.sync()
    dead = out / "day" / ".b.csv.sluicegate-0123abcd-7.tmp"  # what a killed worker leaves
    dead.write_bytes(b"partial")
    later = LocalDestination(str(out), stale_after=0)  # another process: cleans "day" once
    staged = later.stage("day/b.csv")
    staged.file.write(b"y\n")
    later.publish(staged)
    later.sync()
    assert sorted(p.name for p in (out / "day").iterdir()) == ["a.csv", "b.csv", "r.sluicegate-1.tmp"]
    assert later.list_files("day") == ["day/a.csv", "day/b.csv", "day/r.sluicegate-1.tmp"]
    with pytest.raises(BadPartitionValue, match="has the form of sluicegate's temp files"):
        later.check_path("day/.x.csv.sluicegate-0123abcd-7.tmp")


def test_a_folder_removed_under_a_long_lived_destination_is_made_again(tmp_path: Path) -> None:
    """``run --every`` keeps one destination: it made each folder once, so after someone removed
    one (``_manifests``, a partition's folder) every later file for it failed until a restart."""
    out = tmp_path / "out"
    local = LocalDestination(str(out))
    for name in ("site/a.csv", "site/b.csv"):
        staged = local.stage(name)
        staged.file.write(name.encode())
        local.publish(staged)
        local.sync()
        if name == "site/a.csv":
            shutil.rmtree(out / "site")
    assert [p.name for p in (out / "site").iterdir()] == ["b.csv"]


# ----------------------------------------------------------------- 15: install with a broken task


def test_install_exits_2_naming_a_broken_trigger_task(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "p", source=url, destination=str(tmp_path / "o"))
    Db(url)
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text(toml.read_text().replace('grain = "day"', 'grain = "fortnight"'))
    proc = cli(root, "install")
    assert proc.returncode == 2
    assert "openaq" in proc.stderr and "fortnight" in proc.stderr


def test_install_says_when_there_is_nothing_to_install(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "p", source=url, destination=str(tmp_path / "o"), capture="explicit")
    Db(url)
    proc = cli(root, "install")
    assert proc.returncode == 0 and "nothing to install" in proc.stdout


# ----------------------------------------------------------------- 18: SQLite's time resolution


def test_sqlite_compares_times_at_millisecond_resolution_the_same_way_everywhere(tmp_path: Path) -> None:
    """A reading 0.4 ms before midnight rounds to midnight in SQLite's julianday(): the docs say so,
    and capture and export agree, so the row lands in the partition that was marked."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(
        tmp_path / "proj", source=url, destination=str(tmp_path / "out"), fmt="csv", zone="UTC"
    )
    db = Db(url)
    operations.install(load(root))
    db.location(1, "UTC")
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute(
        "INSERT INTO measurements (location_id, sensor_id, datetime, value, ingested_at) "
        "VALUES (1, 10, '2024-01-01T23:59:59.9996Z', 1.0, '2024-01-02T00:00:00Z')"
    )
    conn.commit()
    [summary] = engine.run(load(root))
    assert summary.exported == 1
    [path] = files(tmp_path / "out")
    assert "20240102" in path.name and len(read_csv(path)) == 1
    text = (DOCS / "guarantees.md").read_text()
    assert re.search(r"millisecond resolution", text) and "julianday()" in text


# ----------------------------------------------------------------- 11: MariaDB, what is not there yet

MARIADB_URL = "mariadb://u:hunter2@127.0.0.1:1/db"  # never reached: refused while loading


def test_every_kind_keeps_its_ledger_on_mariadb(tmp_path: Path) -> None:
    """No kind is refused for a MariaDB ledger: `tasks` names no problem for them."""
    root = write_project(
        tmp_path / "p", source=f"sqlite:///{tmp_path / 'src.db'}", destination=str(tmp_path / "out"),
        ledger=MARIADB_URL,
    )  # fmt: skip
    task = root / "tasks" / "studies"
    task.mkdir()
    (task / "task.toml").write_text(
        'kind = "incremental"\nentity = "study_id"\ncursor = "at"\npath = "{study_id}/{start:%Y%m%dT%H%M%S}.{ext}"\n'
    )
    (task / "select.sql").write_text("SELECT 1 AS study_id, 2 AS at")
    old = root / "tasks" / "old"
    old.mkdir()
    (old / "task.toml").write_text('kind = "archive"\n')
    (old / "select.sql").write_text("SELECT 1 AS x")
    proc = cli(root, "tasks")
    assert "cannot keep their ledger" not in proc.stdout
    assert "openaq: partitioned" in proc.stdout and "studies: incremental" in proc.stdout
    assert "old: archive" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr and "hunter2" not in proc.stdout + proc.stderr


BLOCKS_TASK = """kind = "blocks"
zone = "UTC"
key = "provider"
keys = ["lime"]
stages = ["extract", "publish"]
[extract]
time = "ended_at"
path = "{stage}/{provider}/{label}.jsonl"
[publish]
path = "csv/{provider}/{block:%Y%m%dT%H%M%z}.{ext}"
format = "csv"
columns = { ride = "int", provider = "text", ended_at = "timestamptz" }
"""


def test_a_kind_not_supported_on_a_mariadb_source_is_named(tmp_path: Path) -> None:
    root = write_project(
        tmp_path / "p",
        source=MARIADB_URL,
        destination=str(tmp_path / "out"),
        ledger=f"sqlite:///{tmp_path / 'l.db'}",
    )
    task = root / "tasks" / "old"
    task.mkdir()
    (task / "task.toml").write_text(BLOCKS_TASK)
    (task / "select.sql").write_text("SELECT 1 AS ride, 'lime' AS provider, NOW() AS ended_at")
    proc = cli(root, "tasks")
    assert proc.returncode == 2, proc.stderr  # `tasks` lists each task's problem and the others, then exits 2
    assert (
        f"{task / 'task.toml'} kind: 'blocks' is not supported on MariaDB/MySQL sources yet" in proc.stdout
    ), proc.stdout
    assert "openaq: partitioned" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_datetime_zone_outside_mariadb_exits_2_naming_the_setting(tmp_path: Path) -> None:
    """``[time] datetime_zone`` is about MariaDB's DATETIME; on SQLite or PostgreSQL it would be ignored."""
    root = write_project(
        tmp_path / "p", source=f"sqlite:///{tmp_path / 'src.db'}", destination=str(tmp_path / "o")
    )
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text(
        toml.read_text().replace(
            'boundary = "start"', 'boundary = "start"\ndatetime_zone = "Europe/Brussels"'
        )
    )
    proc = cli(root, "run", "openaq")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        f"{toml} [time] datetime_zone: applies to DATETIME columns of MariaDB/MySQL sources only"
        in proc.stderr
    )
    assert "on SQLite text with Z or ±HH:MM" in proc.stderr  # it gave PostgreSQL's advice on SQLite
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------- counts beyond a database integer


@pytest.mark.parametrize("option", ["--limit", "--batch-size"])
def test_a_count_no_database_integer_holds_is_a_usage_error(tmp_path: Path, option: str) -> None:
    """``--batch-size 99999999999999999999`` reached SQLite and gave an OverflowError traceback."""
    root = write_project(
        tmp_path / "p", source=f"sqlite:///{tmp_path / 's.db'}", destination=str(tmp_path / "o")
    )
    proc = cli(root, "run", option, str(10**20))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"Invalid value for '{option}'" in proc.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("dropped", ["datetime", "location_id", "sensors_id"])
def test_a_select_missing_a_task_column_stops_the_task_and_parks_nothing(
    tmp_path: Path, workers: str, dropped: str
) -> None:
    """select.sql no longer returns the [time] column, a key or an `order_by` column: every
    claimed partition failed on the batch query and was parked (exit 1), and after the SQL was
    fixed they stayed parked until `reset --failed`. Now the task stops before any claim with
    `check`'s sentence (exit 2), and its partitions wait, pending."""
    root = write_project(
        tmp_path / "proj", source=f"sqlite:///{tmp_path / 's.db'}", destination=str(tmp_path / "out")
    )
    db = Db(f"sqlite:///{tmp_path / 's.db'}")
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, [dt.datetime(2024, 5, 1, 1, tzinfo=UTC), dt.datetime(2024, 5, 2, 1, tzinfo=UTC)])
    select = root / "tasks" / "openaq" / "select.sql"
    good = select.read_text()
    column = {
        "datetime": "m.datetime",
        "location_id": "m.location_id",
        "sensors_id": "m.sensor_id AS sensors_id",
    }
    assert column[dropped] in good
    select.write_text(good.replace(column[dropped] + ", ", "", 1))
    ran = cli(root, "run", "--workers", workers)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    assert f"{dropped!r} is not a column of select.sql's result" in ran.stderr
    assert "; fix select.sql or the task" in ran.stderr
    assert "Traceback" not in ran.stderr
    assert "2 pending" in cli(root, "status").stdout
    select.write_text(good)
    ran = cli(root, "run")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert len(files(tmp_path / "out")) == 2
    db.close()


def test_mark_keeps_a_number_like_value_of_a_text_key_as_text(tmp_path: Path) -> None:
    """`mark bysite site=7` made the integer 7: a partition beside the one its rows belong to
    ("7"), exported with no file."""
    root, db = _site_project(tmp_path)
    db.location(1, "UTC", name="7")
    db.insert(1, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC)])
    marked = cli(root, "mark", "bysite", "site=7", "day=2024-01-01")
    assert marked.returncode == 0, marked.stderr
    pkeys = [r[0] for r in db.rows("SELECT pkey FROM sluicegate_partitions WHERE task = 'bysite'")]
    assert pkeys == ['["7","2024-01-01"]']
    [summary] = engine.run(load(root), ["bysite"])
    assert (summary.exported, summary.rows) == (1, 1)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in files(tmp_path / "out")] == [
        "7/2024-01-01.csv"
    ]


def test_a_column_named_in_another_case_is_refused_before_any_claim(tmp_path: Path) -> None:
    """The readers look columns up by exact name (MariaDB's order and byte-exact key match, SQLite's
    time column), so `order_by = ["SENSORS_ID"]` for `sensors_id` is refused by `check` and by the
    run before any claim (exit 2), and the partition waits, pending."""
    root = write_project(
        tmp_path / "proj", source=f"sqlite:///{tmp_path / 's.db'}", destination=str(tmp_path / "out")
    )
    toml = root / "tasks" / "openaq" / "task.toml"
    toml.write_text(toml.read_text().replace('order_by = ["sensors_id"]', 'order_by = ["SENSORS_ID"]'))
    db = Db(f"sqlite:///{tmp_path / 's.db'}")
    operations.install(load(root))
    db.location(1, "UTC")
    db.insert(1, [dt.datetime(2024, 5, 1, 1, tzinfo=UTC)])
    assert cli(root, "check").returncode == 2
    ran = cli(root, "run")
    assert (
        ran.returncode == 2
        and "'SENSORS_ID' is not a column of select.sql's result (it has 'sensors_id'" in ran.stderr
    )
    assert "1 pending" in cli(root, "status").stdout and files(tmp_path / "out") == []
    db.close()


def _studies_task(tmp_path: Path, toml: str, select: str) -> tuple[Path, Path]:
    """A project on a SQLite source with the task folder ``tasks/studies``: (root, its folder)."""
    root = write_project(
        tmp_path / "p", source=f"sqlite:///{tmp_path / 'src.db'}", destination=str(tmp_path / "o")
    )
    task = root / "tasks" / "studies"
    task.mkdir()
    (task / "task.toml").write_text(toml)
    (task / "select.sql").write_text(select)
    return root, task


@pytest.mark.parametrize(
    "entity,path,blamed",
    [
        ("studyid", "{study_id}/{start:%Y%m%d}.{ext}", "task.toml entity: 'studyid' is not in path"),
        ("study_id", "{study_id}/{stat:%Y%m%d}.{ext}", "task.toml path: {stat} is not a window field"),
        ("studyid", "{study_id}/{stat:%Y%m%d}.{ext}", "task.toml path: {stat} is not a window field"),
    ],
)
def test_a_misspelt_incremental_entity_is_blamed_not_the_path(
    tmp_path: Path, entity: str, path: str, blamed: str
) -> None:
    """The path names the entity column; a typo in `entity` was reported as a path error."""
    from sluicegate.exceptions import ConfigError

    root, task = _studies_task(
        tmp_path,
        f'kind = "incremental"\nentity = "{entity}"\ncursor = "at"\npath = "{path}"\n',
        "SELECT 1 AS study_id, 2 AS at",
    )
    with pytest.raises(ConfigError) as refused:
        load(root).task("studies")
    assert blamed in str(refused.value) and str(task / "task.toml") in str(refused.value)


@pytest.mark.parametrize("entities", ["[true]", "[1.5]", '"s1"', '[["s1"]]', "5"])
def test_an_incremental_entities_list_of_other_values_is_refused(tmp_path: Path, entities: str) -> None:
    """`entities = [true]` was taken as the entity "True", which no select returns."""
    from sluicegate.exceptions import ConfigError

    root, _ = _studies_task(
        tmp_path,
        f'kind = "incremental"\nentity = "s"\ncursor = "at"\npath = "{{s}}/{{start:%Y%m%dT%H%M%S}}.{{ext}}"\n'
        f"entities = {entities}\n",
        "SELECT 1 AS s, 2 AS at",
    )
    with pytest.raises(ConfigError, match=r"task\.toml entities: use a list of entity values"):
        load(root).task("studies")


def test_an_entity_or_tag_with_a_control_character_is_refused_and_never_printed_raw() -> None:
    """From the CLI, a request or HTTP: such an entity was given a watermark and a failed window
    that redrive retried, and its name went raw (a newline, an escape sequence) to the terminal."""
    from sluicegate.cli.render import printable
    from sluicegate.exceptions import UsageError
    from sluicegate.export_request import ExportRequest

    for hostile in ({"entities": ("a\nb",)}, {"entities": ("\x00",)}, {"tag": "\x1b[31mred"}):
        with pytest.raises(UsageError, match="holds a control character"):
            ExportRequest(**hostile)  # type: ignore[arg-type]
    assert ExportRequest(entities=("é-1",), tag="nightly run").entities == ("é-1",)
    assert printable("site\x1b[31m") == "'site\\x1b[31m'" and printable("é-1 x") == "é-1 x"


def test_values_that_would_look_like_others_are_printed_quoted() -> None:
    """`watermark list` printed the entities " s1", "s1 " and "s1" alike (and a decomposed é like
    the composed one), while `watermark forget` needs the exact value."""
    from sluicegate.exceptions import printable

    shown = [printable(v) for v in ("s1", " s1", "s1 ", "", "e\u0301", "\u00e9")]
    assert shown == ["s1", "' s1'", "'s1 '", "''", "'e\\u0301'", "\u00e9"]
    assert len(set(shown)) == len(shown)


@pytest.mark.parametrize(
    "sqs,message",
    [
        ({"queue_url": "q"}, "[sqs] queue_url: 'q' is not an http(s) URL"),
        ({"queue_url": 5}, "[sqs] queue_url: 5 is not text"),
        (
            {"queue_url": "https://sqs.eu-west-1.amazonaws.com/1/m", "region": 5},
            "[sqs] region: 5 is not text",
        ),
        ({"queue_url": "https://h/1/m", "region": "eu west"}, "[sqs] region: 'eu west' is not a region name"),
        (
            {"queue_url": "https://h/1/m", "endpoint_url": "not a url"},
            "[sqs] endpoint_url: 'not a url' is not",
        ),
        # SQS refused every receive ("maximum visibility timeout is 43200"): a run said "will retry"
        (
            {"queue_url": "https://h/1/m", "visibility_timeout": "13h"},
            "[sqs] visibility_timeout: '13h' is not whole seconds from 0 to 12h",
        ),
        (  # sent as int(): 0, so each message came straight back
            {"queue_url": "https://h/1/m", "visibility_timeout": "0.5s"},
            "[sqs] visibility_timeout: '0.5s' is not whole seconds",
        ),
    ],
)
def test_bad_sqs_settings_are_named_not_a_traceback(sqs: dict[str, object], message: str) -> None:
    """boto3 raised TypeError or "Invalid endpoint" with a traceback (exit 1), and check said ok."""
    from sluicegate.exceptions import ConfigError
    from sluicegate.sqs import load_sqs

    with pytest.raises(ConfigError) as refused:
        load_sqs(sqs, "t/task.toml [sqs]")
    assert message in str(refused.value)
    good = load_sqs(
        {"queue_url": "http://127.0.0.1:9324/queue/m", "region": "elasticmq"}, "t/task.toml [sqs]"
    )
    assert (good.queue_url, good.region, good.endpoint_url) == (
        "http://127.0.0.1:9324/queue/m",
        "elasticmq",
        None,
    )


@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 4,6 *", "* * * * * * 2020"])
def test_a_cron_schedule_that_never_fires_is_refused_when_the_task_loads(expression: str) -> None:
    """croniter takes "0 0 30 2 *" as valid; check said ok, and run, run --dry-run and serve's
    scheduler ended in CroniterBadDateError's traceback ("failed to find prev date")."""
    from sluicegate.exceptions import ConfigError
    from sluicegate.validate import schedule

    with pytest.raises(ConfigError) as refused:
        schedule({"schedule": expression}, "t/task.toml")
    assert str(refused.value).startswith(
        f"t/task.toml schedule: {expression!r} has no tick before or after now"
    )
    assert schedule({"schedule": "0 0 29 2 *"}, "t/task.toml") == ("0 0 29 2 *", "UTC")  # leap days: fine


@pytest.mark.parametrize(
    "path,fmt,refused",
    [
        ("{site}/{day}.csv.gz", "parquet", "ends in '.csv.gz' but the format is 'parquet'"),
        ("{site}/{day}.csv", "csv.gz", "ends in '.csv' but the format is 'csv.gz'"),
        ("{site}/{day}.csv.gz", "csv.gz", None),
        ("{site}/{day}.{ext}", "parquet", None),
        ("{site}/{day}.dat", "parquet", None),
    ],
)
def test_a_path_naming_another_format_than_the_tasks_is_refused(
    tmp_path: Path, path: str, fmt: str, refused: str | None
) -> None:
    """A path written out as ".csv.gz" and `format = "parquet"` set since: each partition's
    Parquet bytes replaced its CSV.gz file under the same .csv.gz name, which no reader opens."""
    root, _db = _site_project(tmp_path)
    toml = root / "tasks" / "bysite" / "task.toml"
    toml.write_text(
        toml.read_text().replace('"{site}/{day}.csv"', json.dumps(path)).replace('"csv"', f'"{fmt}"')
    )
    checked = cli(root, "check")
    if refused is None:  # no problem, no warning (a note that its first run binds it is no fault)
        said = [line for line in checked.stderr.splitlines() if not line.startswith("note: ")]
        assert checked.returncode == 0 and not any("bysite" in line for line in said), checked.stderr
        return
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert refused in checked.stderr and "end the path with .{ext}" in checked.stderr, checked.stderr
    assert "Traceback" not in checked.stderr


def test_a_path_template_that_swaps_two_keys_moves_every_file_and_a_stale_file_is_still_kept(
    tmp_path: Path,
) -> None:
    """`{site}/{day}.csv` changed to `{day}/{site}.csv`, then `reexport`: partition A's new path was
    partition B's recorded one, and B's A's; the commit checked each against the other's stale record
    and parked both ("would share the file ...; use every key whole in path": it does). Partitions
    that are about to move give their old files up; one that is not (B up to date, only A changed)
    keeps its file, and A is parked saying to reexport."""
    root, db = _site_project(tmp_path)
    days = ("2024-01-01", "2024-01-02")
    for loc, site in enumerate(days, 1):
        db.location(loc, "UTC", name=site)
        db.insert(loc, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC), dt.datetime(2024, 1, 2, 5, tzinfo=UTC)])
    for site, day in zip(days, reversed(days), strict=True):
        operations.mark(load(root), "bysite", {"site": site, "day": day})
    assert engine.run(load(root), ["bysite"])[0].exported == 2
    toml = root / "tasks/bysite/task.toml"
    toml.write_text(toml.read_text().replace("{site}/{day}", "{day}/{site}"))
    operations.mark(load(root), "bysite", {"site": days[0], "day": days[1]})  # A only: B keeps its file
    [stale] = engine.run(load(root), ["bysite"])
    assert (stale.exported, stale.failed) == (0, 1), stale.errors
    assert "reexport bysite" in stale.errors[0] and "every key whole" not in stale.errors[0], stale.errors
    cli(root, "reexport", "bysite", check=True)
    [moved] = engine.run(load(root), ["bysite"])
    assert (moved.exported, moved.failed) == (2, 0), moved.errors
    out = tmp_path / "out"
    for site, day in zip(days, reversed(days), strict=True):
        rows = read_csv(out / day / f"{site}.csv")
        assert {r["site"] for r in rows} == {site} and len(rows) == 1, (site, day, rows)
    assert len(files(out)) == 2  # each old file was the other's new one


def _recorded(root: Path) -> dict[str, tuple[str | None, str]]:
    """Per partition key: the path the ledger records and the partition's state."""
    project = load(root)
    rows = operations.list_partitions(project, project.tasks["bysite"], state=None, limit=100, offset=0)
    return {r["partition"]: (r["path"], r["state"]) for r in rows}


def _check_files_hold_their_partitions(root: Path, out: Path) -> None:
    """Every file the ledger records holds the rows of the partition that records it, and only those."""
    for pkey, (path, _state) in _recorded(root).items():
        if path is not None:
            site, day = json.loads(pkey)
            rows = read_csv(out / path)
            assert {(r["site"], r["datetime"][:10]) for r in rows} == {(site, day)}, (pkey, path, rows)


def _swap_queued(tmp_path: Path) -> tuple[Path, dict[str, str], dict[str, str]]:
    """Two partitions exported under `{site}/{day}.csv`, the template swapped to `{day}/{site}.csv`
    and both queued, B first: B's new path is A's old file, and A's B's. A's rows fail from now on
    (an SQL error, terminal: A is parked at its first try)."""
    root, db = _site_project(tmp_path)
    d1, d2 = "2024-01-01", "2024-01-02"
    for loc, site in enumerate((d1, d2), 1):
        db.location(loc, "UTC", name=site)
        db.insert(loc, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC), dt.datetime(2024, 1, 2, 5, tzinfo=UTC)])
    a, b = {"site": d1, "day": d2}, {"site": d2, "day": d1}
    for part in (a, b):
        operations.mark(load(root), "bysite", part)
    assert engine.run(load(root), ["bysite"])[0].exported == 2
    folder = root / "tasks/bysite"
    text = (folder / "task.toml").read_text().replace("{site}/{day}", "{day}/{site}")
    (folder / "task.toml").write_text(text + '[columns]\nvalue = "float"\n')  # not sampled at start
    (folder / "select.sql").write_text(
        f"SELECT l.name AS site, m.datetime, CASE WHEN l.name = '{d1}' THEN abs(-9223372036854775807 - 1)"
        " ELSE m.value END AS value FROM measurements m JOIN locations l USING (location_id)"
    )
    for part in (b, a):  # B's change first: B is claimed first
        operations.mark(load(root), "bysite", part)
        time.sleep(0.01)
    return root, a, b


def test_a_partition_parked_after_giving_its_old_file_up_no_longer_names_it(tmp_path: Path) -> None:
    """After a key swap, B wrote its new file at A's old path, which A (queued to move) gave up;
    then A's export failed for good. A's ledger row still named that file, which holds B's rows,
    and every later export of B there was refused ("A wrote it under another path template and is
    not queued to export again; run reexport"), even right after a reexport, while A stayed parked.
    B's commit now forgets A's file in the same transaction."""
    root, a, b = _swap_queued(tmp_path)
    a_key, b_key = (json.dumps([p["site"], p["day"]], separators=(",", ":")) for p in (a, b))
    a_old = f"{a['site']}/{a['day']}.csv"
    [first] = engine.run(load(root), ["bysite"], RunOptions(limit=1))  # B, into A's old file
    assert (first.exported, first.failed) == (1, 0), first.errors
    [parked] = engine.run(load(root), ["bysite"])  # A fails for good
    assert (parked.exported, parked.failed) == (0, 1), parked.errors
    recorded = _recorded(root)
    assert recorded[b_key] == (a_old, "exported")
    assert recorded[a_key] == (None, "failed")  # it had no file any more
    _check_files_hold_their_partitions(root, tmp_path / "out")
    cli(root, "reexport", "bysite", check=True)
    [again] = engine.run(load(root), ["bysite"])
    assert (again.exported, again.failed) == (1, 1), again.errors
    assert "integer overflow" in again.errors[0] and "reexport" not in again.errors[0], again.errors
    _check_files_hold_their_partitions(root, tmp_path / "out")


def test_a_partition_without_rows_keeps_the_file_its_old_path_now_names_for_another(tmp_path: Path) -> None:
    """After a key swap, partition A wrote its new file where B's old one was; B, without rows now,
    deletes its recorded file when exported: that was A's new file, recorded exported."""
    root, db = _site_project(tmp_path)
    days = ("2024-01-01", "2024-01-02")
    for loc, site in enumerate(days, 1):
        db.location(loc, "UTC", name=site)
        db.insert(loc, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC), dt.datetime(2024, 1, 2, 5, tzinfo=UTC)])
    pairs = list(zip(days, reversed(days), strict=True))
    for site, day in pairs:
        operations.mark(load(root), "bysite", {"site": site, "day": day})
    assert engine.run(load(root), ["bysite"])[0].exported == 2
    toml = root / "tasks/bysite/task.toml"
    toml.write_text(toml.read_text().replace("{site}/{day}", "{day}/{site}"))
    db.conn.execute("DELETE FROM measurements WHERE location_id = 2")
    db.conn.commit()
    for site, day in pairs:  # A first, then B
        operations.mark(load(root), "bysite", {"site": site, "day": day})
        time.sleep(0.01)
    for _ in pairs:  # one commit each
        [summary] = engine.run(load(root), ["bysite"], RunOptions(limit=1))
        assert summary.failed == 0, summary.errors
    rows = read_csv(tmp_path / "out" / days[1] / f"{days[0]}.csv")  # A's new file, B's old path
    assert [r["site"] for r in rows] == [days[0]], rows


def test_a_partition_without_rows_deletes_no_file_another_of_its_commit_writes(tmp_path: Path) -> None:
    """After a key swap, A's new file is B's old path P, and B (queued, without rows now) deletes
    its recorded P: in one commit, the deletion was kept. On S3 an upload lands when published,
    before the commit, where P is absent (a lifecycle rule, a hand): the commit then deleted A's
    new file, recorded exported. A deletion of a file another result of the commit writes is dropped."""
    from sluicegate.drivers.partitioned_paths import SharedFiles
    from sluicegate.ledger import Claim, ExportResult
    from sluicegate.ledger.claims import PathTaken

    root, _db = _site_project(tmp_path)
    toml = root / "tasks/bysite/task.toml"
    toml.write_text(toml.read_text().replace("{site}/{day}", "{day}/{site}"))
    task = load(root).tasks["bysite"]
    d1, d2 = "2024-01-01", "2024-01-02"  # sites named as days: A (d1, d2) and B (d2, d1) swap files
    a_key, b_key = json.dumps([d1, d2]), json.dumps([d2, d1])
    shared, a_old = f"{d2}/{d1}.csv", f"{d1}/{d2}.csv"  # A's new path is B's old one, and back

    def claim(i: int, pkey: str, prev: str | None) -> Claim:
        keys = dict(zip(("site", "day"), json.loads(pkey), strict=True))  # as the ledger stores them
        return Claim(
            id=i, task="bysite", pkey=pkey, keys=keys, zone="UTC", version=2, attempts=0, forced=False,
            exported_version=1, token="t", prev_path=prev, prev_bytes=1, prev_checksum="c",
        )  # fmt: skip

    a = ExportResult(claim=claim(1, a_key, a_old), path=shared, rows=1, nbytes=1, checksum="s",
                     published=True)  # fmt: skip
    b = ExportResult(claim=claim(2, b_key, shared), path=None, rows=0, nbytes=0, checksum=None, published=True,
                     remove=shared)  # fmt: skip
    kept = SharedFiles(task)([a, b], [PathTaken(shared, b_key, "UTC", True)])
    assert [(r.claim.id, r.path, r.remove) for r in kept] == [(1, shared, None), (2, None, None)]


def test_two_hours_of_one_wall_clock_and_abbreviation_are_parked_saying_to_write_the_offset(
    tmp_path: Path,
) -> None:
    """`{hour:%Y%m%dT%H%Z}` passes the load-time check (New York's fall-back night has EDT and
    EST), but Moscow's clocks went back on 2014-10-26 with MSK on both sides: the second 01:00 hour
    was parked saying to use every key whole in path, which it does; it now says to write the offset."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "proj", source=url, destination=str(tmp_path / "out"), zone=None)
    toml = root / "tasks" / "openaq" / "task.toml"
    text = toml.read_text().replace('grain = "day"', 'grain = "hour"')
    toml.write_text(text.replace("{day:%Y%m%d}", "{hour:%Y%m%dT%H%Z}").replace("{day:", "{hour:"))
    db = Db(url)
    operations.install(load(root))
    db.location(1, "Europe/Moscow")
    db.insert(
        1, [dt.datetime(2014, 10, 25, 21, 30, tzinfo=UTC), dt.datetime(2014, 10, 25, 22, 30, tzinfo=UTC)]
    )
    [summary] = engine.run(load(root), ["openaq"])
    assert (summary.exported, summary.failed) == (1, 1), summary.errors
    assert "differ only in their UTC offset" in summary.errors[0], summary.errors
    assert "{hour:%Y%m%dT%H%z}" in summary.errors[0] and "every key whole" not in summary.errors[0]


def test_workers_with_the_old_and_the_new_path_template_never_replace_each_others_file(
    tmp_path: Path,
) -> None:
    """A rolling change of `path` (a key swap): a worker with the new template moves A to B's old
    file (B is queued), then a worker with the old one would write B there: it is refused, with a
    message that does not call the other worker's template an earlier one; a reexport then moves both."""
    root, db = _site_project(tmp_path)
    days = ("2024-01-01", "2024-01-02")
    for loc, site in enumerate(days, 1):
        db.location(loc, "UTC", name=site)
        db.insert(loc, [dt.datetime(2024, 1, 1, 5, tzinfo=UTC), dt.datetime(2024, 1, 2, 5, tzinfo=UTC)])
    pairs = list(zip(days, reversed(days), strict=True))
    for site, day in pairs:
        operations.mark(load(root), "bysite", {"site": site, "day": day})
    assert engine.run(load(root), ["bysite"])[0].exported == 2
    old, toml = load(root), root / "tasks/bysite/task.toml"
    toml.write_text(toml.read_text().replace("{site}/{day}", "{day}/{site}"))
    for site, day in pairs:
        operations.mark(load(root), "bysite", {"site": site, "day": day})
    assert engine.run(load(root), ["bysite"], RunOptions(limit=1))[0].exported == 1  # A, new template
    [refused] = engine.run(old, ["bysite"], RunOptions(limit=1))  # B, old template: A's new file
    assert (refused.exported, refused.failed) == (0, 1), refused.errors
    assert "under another path template" in refused.errors[0] and "reexport bysite" in refused.errors[0]
    assert read_csv(tmp_path / "out" / days[1] / f"{days[0]}.csv")[0]["site"] == days[0]  # A's, kept
    cli(root, "reexport", "bysite", check=True)
    assert engine.run(load(root), ["bysite"])[0].exported == 2
    for site, day in pairs:
        assert {r["site"] for r in read_csv(tmp_path / "out" / day / f"{site}.csv")} == {site}
