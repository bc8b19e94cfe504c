"""Bad values from the environment, stdin, manifests and the command line: one sentence naming
where the value came from, exit 2 for configuration and usage, never a traceback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from sluicegate.keytext import coerce_value
from support import SLUICEGATE, cli, write_project

WIDE = str(10**23)


def _project(tmp_path: Path) -> Path:
    sqlite3.connect(tmp_path / "s.db").close()  # an empty source: sluicegate never makes one
    return write_project(
        tmp_path / "p", source=f"sqlite:///{tmp_path / 's.db'}", destination=str(tmp_path / "o"), zone="UTC"
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


@pytest.mark.parametrize(
    "variable,value,says",
    [
        # An OverflowError traceback from SQLite, at the first claim.
        ("SLUICEGATE_DEFAULTS__BATCH_SIZE", WIDE, f"batch_size: {WIDE} is too large; use at most 2147483647"),
        # Every claim expired before its commit: a healthy run parked every partition.
        (
            "SLUICEGATE_DEFAULTS__LEASE",
            "0s",
            "lease: '0s' is too short to renew a claim in; use at least '1s'",
        ),
        ("SLUICEGATE_DEFAULTS__LEASE", "0.5", "lease: '0.5' is too short"),
        # logging.BASIC_FORMAT is an attribute of logging, not a level: a TypeError traceback.
        ("LOG_LEVEL", "BASIC_FORMAT", "log_level: 'BASIC_FORMAT' is not valid; use one of DEBUG, INFO"),
        ("LOG_LEVEL", "verbose", "log_level: 'VERBOSE' is not valid"),
        # These two named only the file, which holds no such value.
        ("SLUICEGATE_DESTINATION__SYNC", "fast", "sync: 'fast' is not a sync mode; use auto, batch or file"),
        (
            "SLUICEGATE_DESTINATION__S3_CLIENT",
            "aws",
            "s3_client: 'aws' is not an S3 client; use crt or boto3",
        ),
    ],
)
def test_a_bad_setting_from_the_environment_names_its_variable(
    tmp_path: Path, variable: str, value: str, says: str
) -> None:
    err = _one_line_error(cli(_project(tmp_path), "run", env={variable: value}))
    assert says in err and f"(the value comes from the environment variable {variable})" in err, err


def test_log_levels_are_taken_in_any_case_with_pythons_aliases(tmp_path: Path) -> None:
    root = _project(tmp_path)
    for level in ("warn", "Debug", "fatal"):
        assert cli(root, "status", env={"LOG_LEVEL": level}).returncode == 0
    assert "DEBUG sluicegate" in cli(root, "status", env={"LOG_LEVEL": "debug"}).stderr


def test_secret_encrypt_refuses_stdin_that_is_not_utf8(tmp_path: Path) -> None:
    key = subprocess.run(
        [SLUICEGATE, "secret", "key"], capture_output=True, text=True, check=True
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICEGATE_")} | {
        "SLUICEGATE_FERNET_KEY": key
    }
    proc = subprocess.run(
        [SLUICEGATE, "secret", "encrypt", "-"], input=b"\xff\xfe", capture_output=True, env=env, timeout=60
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in err, err
    assert "standard input is not UTF-8 text" in err
    good = subprocess.run(
        [SLUICEGATE, "secret", "encrypt", "-"],
        input="h\u00e9llo\n".encode(),
        capture_output=True,
        env=env,
        timeout=60,
    )
    token = good.stdout.decode().strip()
    back = subprocess.run([SLUICEGATE, "secret", "decrypt", token], capture_output=True, env=env, timeout=60)
    assert back.stdout.decode() == "h\u00e9llo\n"


def test_a_key_that_is_not_a_fernet_key_names_its_variable_and_how_to_make_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICEGATE_", "ATD_MDS_"))}
    proc = subprocess.run(
        [SLUICEGATE, "secret", "encrypt", "x"], capture_output=True, text=True,
        env=env | {"ATD_MDS_FERNET_KEY": "zzz"}, timeout=60,
    )  # fmt: skip
    err = _one_line_error(proc)
    assert "The key in ATD_MDS_FERNET_KEY is not a Fernet key" in err and "'sluicegate secret key'" in err


@pytest.mark.parametrize(
    "content,says",
    [
        (b"\xff\n", "'utf-8' codec can't decode"),
        (b'{"time": "x", "path": "p", "action": "put", "rows": 1, "bytes": 1, "sha256": "", "task": "t",'
         b' "run": "r", "seq": 1, "keys": {}}\n', "Invalid isoformat string: 'x'"),
        (b'{"time": "2030-01-01T00:00:00", "path": "p", "action": "put", "rows": 1, "bytes": 1, "sha256": "",'
         b' "task": "t", "run": "r", "seq": 1, "keys": {}}\n', "has no UTC offset"),
        # two entries for one path, one seq a string: the sort was a TypeError with a traceback
        (b'{"time": "2030-01-01T00:00:00Z", "path": "p", "action": "put", "rows": 1, "bytes": 1, "sha256": "",'
         b' "task": "t", "run": "r", "seq": 2, "keys": {}}\n'
         b'{"time": "2030-01-01T00:00:00Z", "path": "p", "action": "put", "rows": 1, "bytes": 1, "sha256": "",'
         b' "task": "t", "run": "r", "seq": "1", "keys": {}}\n', "field 'seq' is '1', not a whole number"),
        # a line that is JSON but no object, keys that are no object, a sha256 that is no text:
        # each was a traceback (in the reading, in --json, in the text listing)
        (b'["p", "put"]\n', "a line is ['p', 'put'], not an object"),
        (b'{"time": "2030-01-01T00:00:00Z", "path": "p", "action": "put", "rows": 1, "bytes": 1, "sha256": "",'
         b' "task": "t", "run": "r", "seq": 1, "keys": "k"}\n', "field 'keys' is 'k', not an object"),
        (b'{"time": "2030-01-01T00:00:00Z", "path": "p", "action": "put", "rows": 1, "bytes": 1, "sha256": 5,'
         b' "task": "t", "run": "r", "seq": 1, "keys": {}}\n', "field 'sha256' is 5, not a text or null"),
    ],
)  # fmt: skip
def test_changes_names_a_manifest_it_cannot_read(tmp_path: Path, content: bytes, says: str) -> None:
    root = _project(tmp_path)
    folder = tmp_path / "o" / "_manifests" / "2030" / "01" / "01"
    folder.mkdir(parents=True)
    (folder / f"{'a' * 32}-000001.jsonl").write_bytes(content)
    err = _one_line_error(cli(root, "changes", "--since", "2000-01-01"), code=1)
    assert f"{'a' * 32}-000001.jsonl is damaged (cut short or edited" in err and says in err, err


def test_changes_since_a_run_whose_manifests_hold_nothing_says_so(tmp_path: Path) -> None:
    """`changes --since RUN` after that run's manifest was emptied by hand: max() of nothing."""
    root = _project(tmp_path)
    folder = tmp_path / "o" / "_manifests" / "2030" / "01" / "01"
    folder.mkdir(parents=True)
    (folder / f"{'a' * 32}-000001.jsonl").write_bytes(b"")
    err = _one_line_error(cli(root, "changes", "--since", "a" * 32))
    assert "the manifests of that run" in err and "hold no entries; give a time instead" in err


@pytest.mark.parametrize(
    "text,value",
    [("7", 7), ("-3", -3), ("0", 0), ("007", "007"), ("1_0", "1_0"), (" 7", " 7"), ("+7", "+7"),
     (str(2**63 - 1), 2**63 - 1), (str(2**63), str(2**63)), ("-0", 0)],
)  # fmt: skip
def test_only_a_value_written_as_an_sql_integer_is_an_integer(text: str, value: object) -> None:
    assert coerce_value(text) == value and type(coerce_value(text)) is type(value)


def test_mark_refuses_a_key_given_twice(tmp_path: Path) -> None:
    """`mark ... day=2024-01-01 day=2024-01-02` said it marked both and marked only the second."""
    root = _project(tmp_path)
    err = _one_line_error(cli(root, "mark", "openaq", "location_id=1", "day=2024-01-01", "day=2024-01-02"))
    assert "day is given twice ('2024-01-01' and '2024-01-02')" in err
    assert cli(root, "mark", "openaq", "location_id=1", "day=2024-01-01", "day=2024-01-01").returncode == 0


@pytest.mark.parametrize("name", ["a b", "_hidden", "zürich"])
def test_a_task_folder_name_is_refused_with_the_rule_it_breaks(tmp_path: Path, name: str) -> None:
    """A folder `a b` was told it "must start with a letter or digit", which it does."""
    root = _project(tmp_path)
    (root / "tasks" / "openaq").rename(root / "tasks" / name)
    err = _one_line_error(cli(root, "check"))
    assert f"task folder name {name!r}: use only ASCII letters, digits, '_', '.' and '-'" in err, err
