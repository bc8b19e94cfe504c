"""What a newcomer types wrong in sluicegate.toml, or where a newcomer keeps a project: one
clear line and exit 2, and hints that can be pasted back into a shell."""

from __future__ import annotations

import json
import shlex
import sqlite3
from pathlib import Path

import pytest

from support import cli, write_project


def _project(root: Path, destination: str) -> Path:
    sqlite3.connect(root.parent / "src.db").close()
    return write_project(root, source=f"sqlite:///{root.parent / 'src.db'}", destination=destination)


@pytest.mark.parametrize("value", ["5", '["exports"]', "true"])
def test_a_destination_url_that_is_not_text_is_refused(tmp_path: Path, value: str) -> None:
    """`url = 5` exported into a folder named "5", `url = ["a"]` into one named "['a']"."""
    root = _project(tmp_path / "p", "exports")
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace('url = "exports"', f"url = {value}", 1))
    assert f"url = {value}" in toml.read_text()
    proc = cli(root, "run")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "[destination] url" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["tasks"]


@pytest.mark.parametrize(
    "url,code",
    [
        ("foo://x/y", 2),  # a protocol fsspec does not know
        ("gs://bucket/x", 2),  # gcsfs is not installed
        ("ftp://user:hunter2@host.invalid/x", 1),  # the host cannot be reached
    ],
)
def test_an_fsspec_destination_that_cannot_be_opened_is_one_line(tmp_path: Path, url: str, code: int) -> None:
    root = _project(tmp_path / "p", url)
    for command, expected in (("run", code), ("check", 2)):  # check lists every problem: exit 2
        proc = cli(root, command, timeout=60)
        assert proc.returncode == expected, (command, proc.stdout + proc.stderr)
        assert "Traceback" not in proc.stderr and "destination URL '" in proc.stderr, proc.stderr
        assert "hunter2" not in proc.stderr


def test_init_and_install_hints_quote_a_folder_with_spaces(tmp_path: Path) -> None:
    """`init "my proj"` printed `sluicegate -C my proj check`: pasted, that is `-C my` and a
    command `proj`."""
    folder = tmp_path / "my proj é"
    out = cli(tmp_path, "init", str(folder), check=True).stdout
    steps = [
        line.split(". ", 1)[1].split("#")[0] for line in out.split("next:")[1].splitlines() if " -C " in line
    ]
    assert steps
    for step in steps:
        words = shlex.split(step)
        assert words[1:3] == ["-C", str(folder)], (step, words)
    cli(tmp_path, "generate", "--db", f"sqlite:///{folder / 'measurements.db'}", "--rows", "200", check=True)
    installed = cli(folder, "install", check=True).stdout
    hint = installed.split("run ", 1)[1].split(" to mark", 1)[0]
    assert shlex.split(shlex.split(hint)[0])[1:] == ["-C", str(folder), "backfill", "openaq"], installed
    marked = cli(folder, "backfill", "openaq", check=True).stdout
    hint = marked.split("; ", 1)[1].removesuffix(" exports them\n")
    assert shlex.split(shlex.split(hint)[0])[1:] == ["-C", str(folder), "run"], marked


@pytest.mark.parametrize("command", ["init", "demo"])
def test_init_into_a_folder_that_cannot_be_made_is_one_line(tmp_path: Path, command: str) -> None:
    """`init afile/proj` (or a folder this user may not write) ended in a traceback."""
    (tmp_path / "afile").write_text("not a folder\n")
    proc = cli(tmp_path, command, str(tmp_path / "afile" / "proj"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        proc.stderr.startswith("sluicegate: error: cannot write the project into ")
        and "Traceback" not in proc.stderr
    )
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_workers_in_the_settings_are_capped_as_run_workers_is(tmp_path: Path) -> None:
    """`run --workers 65` was refused but `[defaults] workers = 65` (or 5000) was taken: a typo
    could start thousands of exporter processes."""
    root = _project(tmp_path / "p", "exports")
    toml = root / "sluicegate.toml"
    toml.write_text(toml.read_text().replace("[defaults]", "[defaults]\nworkers = 65", 1))
    proc = cli(root, "run", "--dry-run")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "[defaults] workers: 65 is too large; use at most 64" in proc.stderr
    toml.write_text(toml.read_text().replace("workers = 65", "workers = 64"))
    assert cli(root, "run", "--dry-run").returncode == 0


def test_run_and_status_of_a_project_without_tasks_say_so(tmp_path: Path) -> None:
    """They printed nothing and exited 0 (`run --every` kept doing nothing); only `check` said why."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "sluicegate.toml").write_text('[source]\nurl = "sqlite:///x.db"\n[destination]\nurl = "out"\n')
    for command in ("run", "status", "check"):
        proc = cli(root, command)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"warning: {root} has no tasks" in proc.stderr, (command, proc.stderr)


def test_a_task_put_straight_into_tasks_is_named_with_where_it_goes(tmp_path: Path) -> None:
    """tasks/task.toml and tasks/select.sql (no task folder) gave only "has no tasks: add a
    folder per task", with `check` saying ok: the files that were there went unmentioned."""
    root = tmp_path / "p"
    (root / "tasks").mkdir(parents=True)
    (root / "sluicegate.toml").write_text('[source]\nurl = "sqlite:///x.db"\n[destination]\nurl = "out"\n')
    (root / "tasks" / "task.toml").write_text('keys = ["location_id"]\n')
    (root / "tasks" / "select.sql").write_text("SELECT 1 AS location_id\n")
    for command in ("run", "status", "check"):
        proc = cli(root, command)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
        assert (
            f"{root / 'tasks' / 'task.toml'} is not in a task folder; move task.toml and select.sql into a"
            f" folder named after the task, such as {root / 'tasks' / 'mytask'}/" in proc.stderr
        ), (command, proc.stderr)


def test_a_project_whose_config_or_tasks_is_the_wrong_kind_of_file_says_so(tmp_path: Path) -> None:
    """sluicegate.toml as a folder said "holds no sluicegate.toml: run 'sluicegate init'", which
    then refused because it "already exists"; tasks as a file said only "has no tasks"."""
    root = tmp_path / "p"
    (root / "sluicegate.toml").mkdir(parents=True)
    proc = cli(root, "status")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{root / 'sluicegate.toml'} is a folder, not a file; remove it" in proc.stderr, proc.stderr
    (root / "sluicegate.toml").rmdir()
    (root / "sluicegate.toml").write_text('[source]\nurl = "sqlite:///x.db"\n[destination]\nurl = "out"\n')
    (root / "tasks").write_text("")
    proc = cli(root, "status")
    assert f"{root / 'tasks'} is a file, not a folder; make it a folder of tasks" in proc.stderr, proc.stderr


@pytest.mark.parametrize("db", ["sqlite:///{tmp}/afile", "postgresql://u:hunter2@127.0.0.1:1/x"])
def test_generate_into_a_database_it_cannot_use_is_one_line(tmp_path: Path, db: str) -> None:
    """A file that is no SQLite database, or a server that is not there, ended in a traceback
    (`--dataset airmax` already said it in one line)."""
    (tmp_path / "afile").write_text("not a database, but long enough to be read as one\\n" * 10)
    proc = cli(tmp_path, "generate", "--db", db.format(tmp=tmp_path), "--rows", "10", timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("sluicegate: error: database ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "hunter2" not in proc.stderr, proc.stderr


def test_dry_run_lists_a_claimable_partition_with_its_time_key_last(tmp_path: Path) -> None:
    """A marked partition was listed `day=... location_id=1` (the ledger's keys, sorted by name),
    one from the trigger inbox `location_id=1 day=...`, as everywhere else."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "p", source=url, destination="out", capture="explicit", zone="UTC")
    cli(tmp_path, "generate", "--db", url, "--rows", "10", "--locations", "1", check=True)
    cli(root, "mark", "openaq", "location_id=1", "day=2024-05-03", check=True)
    out = cli(root, "run", "--dry-run", check=True).stdout
    assert "  location_id=1 day=2024-05-03  (new) -> " in out, out


@pytest.mark.parametrize("day", ["2024-05-03T10:00", "2024-05-03xyz", "2024-05-03 "])
def test_mark_refuses_a_day_followed_by_anything(tmp_path: Path, day: str) -> None:
    """``day=2024-05-03T10:00`` (or ``2024-05-03xyz``) marked the 3rd, exit 0: only the first ten
    characters were read, and the confirmation repeated what was typed."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "p", source=url, destination="out", capture="explicit", zone="UTC")
    cli(tmp_path, "generate", "--db", url, "--rows", "10", "--locations", "1", check=True)
    proc = cli(root, "mark", "openaq", "location_id=1", f"day={day}")
    assert proc.returncode == 2 and "is not a valid day; use YYYY-MM-DD" in proc.stderr, proc.stderr
    assert "(new)" not in cli(root, "run", "--dry-run", check=True).stdout


@pytest.mark.parametrize(
    "name,says",
    [
        ("tasks/openaq/select.sql", "is not UTF-8 text (byte 0xe9 at byte "),
        ("tasks/openaq/task.toml", "is not UTF-8 text (byte 0xe9 at byte "),
        ("sluicegate.toml", "is not UTF-8 text (byte 0xe9 at byte "),
    ],
)
def test_a_file_saved_in_latin_1_is_named_in_one_line(tmp_path: Path, name: str, says: str) -> None:
    """A select.sql, task.toml or sluicegate.toml with a Latin-1 'é' (an editor's default on
    some systems) ended in a UnicodeDecodeError traceback."""
    root = _project(tmp_path / "p", "exports")
    path = root / name
    path.write_bytes(
        path.read_bytes()
        + "\n# café\n".encode("latin-1").replace(b"#", b"--" if name.endswith(".sql") else b"#")
    )
    for command in ("status", "run"):
        proc = cli(root, command)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        out = proc.stdout + proc.stderr  # status lists a broken task on stdout, with the others
        assert f"{path} {says}" in out and "Traceback" not in out, out


def test_changes_of_a_dsl_folder_names_the_variable_not_a_missing_file(tmp_path: Path) -> None:
    """`changes` in DSL mode said "<root>/sluicegate.toml [destination] manifests is false" of a
    file that does not exist; the feed is off there by default and a variable turns it on."""
    (tmp_path / "DSL" / "agency").mkdir(parents=True)
    (tmp_path / "DSL" / "agency" / "select.sql").write_text("SELECT 1 AS x\n")
    (tmp_path / "DSL" / "agency" / "delete.sql").write_text("DELETE FROM t WHERE 0\n")
    env = {"DSL_PATH": str(tmp_path / "DSL"), "DATABASE_URL": f"sqlite:///{tmp_path / 'd.db'}"}
    env["EXPORT_PATH"] = str(tmp_path / "out")
    proc = cli(tmp_path, "changes", "--since", "2024-01-01", env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "sluicegate.toml [destination]" not in proc.stderr
    assert "SLUICEGATE_DESTINATION__MANIFESTS=true" in proc.stderr, proc.stderr
    env["SLUICEGATE_DESTINATION__MANIFESTS"] = "true"
    proc = cli(tmp_path, "changes", "--since", "2024-01-01", env=env)
    assert proc.returncode == 0 and "no changes since" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "command", [("status",), ("install",), ("mark", "openaq", "location_id=1", "day=2024-05-03")]
)
def test_a_command_that_ends_on_an_unreachable_database_does_not_promise_to_retry(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """`status` or `install` against a server that is down said "...; will retry" and exited."""
    root = write_project(tmp_path / "p", source="postgresql://me:hunter2@127.0.0.1:1/db", destination="out")
    proc = cli(root, *command, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Connection refused" in proc.stderr and "will retry" not in proc.stderr, proc.stderr
    assert "hunter2" not in proc.stderr


def test_check_against_an_unreachable_database_does_not_promise_to_retry(tmp_path: Path) -> None:
    """``check`` listed "[source] url ...: ... Connection refused; will retry" and exited 2."""
    root = write_project(tmp_path / "p", source="postgresql://me:hunter2@127.0.0.1:1/db", destination="out")
    proc = cli(root, "check", timeout=60)
    assert proc.returncode == 2 and "Connection refused" in proc.stderr, proc.stdout + proc.stderr
    assert "will retry" not in proc.stderr and "hunter2" not in proc.stderr, proc.stderr


def test_tasks_leaves_out_the_keys_and_capture_of_a_task_without_them(tmp_path: Path) -> None:
    """An archive (or aggregate) task was listed as `agency: archive, csv.gz, keys , capture ...`,
    and then as `capture explicit`, though only partitioned tasks have a [capture]."""
    root = _project(tmp_path / "p", "exports")
    folder = root / "tasks" / "agency"
    folder.mkdir()
    (folder / "task.toml").write_text('kind = "archive"\n')
    (folder / "select.sql").write_text("SELECT 1 AS x\n")
    lines = cli(root, "tasks", check=True).stdout.splitlines()
    assert "agency: archive, csv.gz" in lines, lines
    assert "openaq: partitioned, csv, keys location_id, day, capture trigger" in lines, lines


def test_a_project_folder_that_does_not_exist_is_called_so(tmp_path: Path) -> None:
    """`-C /typo` said "/typo holds no sluicegate.toml", as of a folder that is there."""
    proc = cli(tmp_path / "typo", "status")
    assert (
        proc.returncode == 2 and f"{tmp_path / 'typo'} does not exist and DSL_PATH is not set" in proc.stderr
    )
    (tmp_path / "empty").mkdir()
    proc = cli(tmp_path / "empty", "status")
    assert proc.returncode == 2 and "empty holds no sluicegate.toml and DSL_PATH is not set" in proc.stderr


def test_a_command_run_inside_a_projects_task_folder_names_the_project(tmp_path: Path) -> None:
    """From `tasks/openaq/` of a project, `status` said "run 'sluicegate init .../tasks/openaq' to
    create a project": a second project nested in the first's task folder."""
    root = _project(tmp_path / "my p", "exports")
    inner = root / "tasks" / "openaq"
    proc = cli(inner, "status")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"is inside the project {root}:" in proc.stderr and "init" not in proc.stderr, proc.stderr
    assert f"sluicegate -C {shlex.quote(str(root))} ..." in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_destination_under_the_home_folder_is_not_a_folder_named_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`url = "~/exports"` exported into `<project>/~/exports`."""
    from support import load

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    root = _project(tmp_path / "p", "~/exports")
    assert load(root).settings.destination.url == str(tmp_path / "home" / "exports")


def test_a_destination_under_an_unknown_home_folder_is_one_line(tmp_path: Path) -> None:
    """`url = "~nosuchuser/exports"` (a folder named so in the project before ~ was expanded)
    raised pathlib's RuntimeError: a traceback, exit 1, on every command."""
    root = _project(tmp_path / "p", "~nosuchuser-sluicegate/exports")
    proc = cli(root, "status")
    assert proc.returncode == 2, proc.stderr
    assert "names no home folder here" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("which", ["destination", "source", "project"])
def test_a_symlink_loop_in_a_path_is_one_line(tmp_path: Path, which: str) -> None:
    """A destination folder, a relative SQLite file or a -C folder that is a symlink loop raised
    pathlib's RuntimeError ("Symlink loop from ..."): a traceback, exit 1, on every command."""
    root = _project(tmp_path / "p", "exports" if which != "destination" else "loop")
    (tmp_path / "loop").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop")
    env, where = {}, tmp_path / "loop"
    if which == "destination":
        (root / "loop").symlink_to(root / "loop2")
        (root / "loop2").symlink_to(root / "loop")
        where = root / "loop"
    elif which == "source":
        env = {"SLUICEGATE_SOURCE__URL": "sqlite:///../loop"}
    else:
        root = tmp_path / "loop"
    proc = cli(root, "status", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{where} is a symbolic link that loops" in proc.stderr, proc.stderr


def test_a_pycache_folder_under_tasks_is_no_task(tmp_path: Path) -> None:
    """Python leaves ``__pycache__`` where a helper module was imported from: it was reported as a
    broken task folder, and ``status`` and ``run`` exited 2. Dot-folders were already skipped."""
    root = _project(tmp_path / "p", "exports")
    (root / "tasks" / "__pycache__").mkdir()
    (root / "tasks" / "__pycache__" / "helpers.cpython-311.pyc").write_bytes(b"\0")
    proc = cli(root, "tasks")
    assert proc.returncode == 0 and "__pycache__" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert proc.stdout.startswith("openaq: "), proc.stdout


@pytest.mark.parametrize(
    "tail", [";", " ; -- the end", "; /* done */  -- really; done", ";\n-- a;b\n", " -- a note\r;\r\n"]
)
def test_a_select_whose_semicolon_comments_follow_runs(tmp_path: Path, tail: str) -> None:
    """``SELECT ... ; -- note`` was refused with "syntax error at or near ';'": only a ``;`` at the
    very end was taken off before the select went inside sluicegate's query."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    root = write_project(tmp_path / "p", source=url, destination="out", capture="explicit", zone="UTC")
    cli(tmp_path, "generate", "--db", url, "--rows", "10", "--locations", "1", check=True)
    select = root / "tasks" / "openaq" / "select.sql"
    select.write_text(select.read_text().rstrip().rstrip(";") + tail)
    cli(root, "mark", "openaq", "location_id=1", "day=2024-05-03", check=True)
    proc = cli(root, "run", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["exported"] == 1, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "text,statement",
    [
        ('SELECT 1 AS "semi;--" FROM t', 'SELECT 1 AS "semi;--" FROM t'),  # a name, not a ';' and a comment
        ("SELECT `a;--`, 'b;/*' FROM t ;", "SELECT `a;--`, 'b;/*' FROM t"),
        ("SELECT 'it''s;' ; -- done", "SELECT 'it''s;'  -- done"),
        ("SELECT 1 ;; /* a */ ; -- b", "SELECT 1  /* a */  -- b"),
        ("SELECT 1; SELECT 2;", "SELECT 1; SELECT 2"),  # two statements stay two: the database says so
        ("SELECT 'never closed;", "SELECT 'never closed"),  # unreadable: a final ';' only, as before
    ],
)
def test_only_a_final_semicolon_outside_names_strings_and_comments_is_taken_off(
    text: str, statement: str
) -> None:
    """The first version took ``;--"`` in a quoted column name for a final ';' and a comment."""
    from sluicegate.validate import statement as final

    assert final(text) == statement


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('mode = "trigger"\n', "", '[capture] table: only for mode = "trigger" or "scan"'),
        ('mode = "trigger"\n', 'mode = "explicit"\n', '[capture] table: only for mode = "trigger" or "scan"'),
        (
            'time = "datetime"\n',
            'time = "datetime"\noverlap = "2h"\n',
            '[capture] overlap: only for mode = "scan"',
        ),
        (
            'time = "datetime"\n',
            'time = "datetime"\ncursor = "ingested_at"\n',
            '[capture] cursor: only for mode = "scan"',
        ),
    ],
)
def test_capture_settings_the_mode_does_not_use_are_refused(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    """A [capture] table, keys and time without mode = "trigger" (the default is "explicit") were
    accepted and captured nothing: `check` said ok and `install` had nothing to install. A scan's
    cursor or overlap under mode = "trigger" was dropped the same way."""
    root = _project(tmp_path / "p", "out")
    toml = root / "tasks" / "openaq" / "task.toml"
    assert old in toml.read_text()
    toml.write_text(toml.read_text().replace(old, new, 1))
    proc = cli(root, "install")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and str(toml) in proc.stderr, proc.stderr


def test_an_aggregate_format_without_a_path_is_refused(tmp_path: Path) -> None:
    """An aggregate's ``format`` is the format of the file a ``path`` writes; without a path no
    file is written, and ``format = "parquet"`` was accepted and ignored (`check` said ok)."""
    from airmax_support import AGGREGATE, airmax_project

    url = f"sqlite:///{tmp_path / 'air.db'}"
    root = airmax_project(tmp_path / "p", url, task_extra='format = "parquet"')
    proc = cli(root, "check")
    toml = root / "tasks" / AGGREGATE / "task.toml"
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{toml} format: " in proc.stderr and "path" in proc.stderr, proc.stderr
    toml.write_text(
        toml.read_text().replace('format = "parquet"', 'format = "parquet"\npath = "{t:%Y%m%d%H%M}.{ext}"')
    )
    assert cli(root, "check").returncode == 0


@pytest.mark.parametrize(
    ("queue_url", "region", "environment", "expected"),
    [
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/m", None, None, "eu-west-1"),
        ("https://ap-south-1.queue.amazonaws.com/123456789012/m", None, "eu-west-1", "ap-south-1"),
        ("https://queue.amazonaws.com/123456789012/m", None, "eu-west-1", "us-east-1"),
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/m", "eu-central-1", None, "eu-central-1"),
        ("http://127.0.0.1:9324/123456789012/m", None, "eu-north-1", "eu-north-1"),
        ("http://127.0.0.1:9324/123456789012/m", None, None, "us-east-1"),
    ],
)
def test_an_sqs_queue_is_asked_in_its_own_region(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, queue_url: str, region: str | None,
    environment: str | None, expected: str,
) -> None:  # fmt: skip
    """Without [sqs] region the client was made for us-east-1, whatever the queue URL's region
    and AWS_DEFAULT_REGION said: every receive of a queue elsewhere was refused. The region is
    [sqs] region, else the AWS URL's, else boto3's default, else us-east-1."""
    from sluicegate.sqs import SqsQueue, SqsSpec

    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))  # no ~/.aws/config region
    if environment is None:
        monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
        monkeypatch.delenv("AWS_REGION", raising=False)
    else:
        monkeypatch.setenv("AWS_DEFAULT_REGION", environment)
    queue = SqsQueue(SqsSpec(queue_url=queue_url, region=region))
    assert queue.client.meta.region_name == expected
