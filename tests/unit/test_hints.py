"""A message's hint to run another command names the project the way the user gave it (``-C``)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sluicegate.cli.app import _TypedHere, typed_here

HINT = "task x: run 'sluicegate backfill x', or `sluicegate reexport x` (sluicegate blocks x --force)"


def test_a_hint_gets_the_project_folder_when_it_is_not_the_current_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "my exports"
    project.mkdir()
    monkeypatch.chdir(tmp_path)
    assert typed_here(HINT, project) == (
        f"task x: run 'sluicegate -C '{project}' backfill x', or `sluicegate -C '{project}' reexport x` "
        f"(sluicegate -C '{project}' blocks x --force)"
    )
    assert typed_here(HINT, Path("my exports")) == HINT.replace("sluicegate ", "sluicegate -C 'my exports' ")


def test_a_hint_stays_as_it_is_in_the_project_folder_and_prose_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert typed_here(HINT, Path(".")) == HINT
    assert typed_here(HINT, tmp_path) == HINT
    prose = "the column is one which sluicegate adds; give the project with 'sluicegate -C DIR ...'"
    assert typed_here(prose, tmp_path / "elsewhere") == prose
    # init and demo name their folder themselves
    folder = "run 'sluicegate init /srv/p' or 'sluicegate demo /srv/d'"
    assert typed_here(folder, tmp_path / "elsewhere") == folder


def test_a_logged_warning_gets_the_project_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    record = logging.LogRecord(
        "sluicegate", logging.WARNING, "f", 1, "run 'sluicegate install %s'", ("t",), None
    )
    assert _TypedHere(Path("/srv/p")).filter(record)
    assert record.getMessage() == "run 'sluicegate -C /srv/p install t'"


def test_a_value_quoted_in_a_message_is_not_taken_for_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition key (or an entity) "sluicegate users" shown by status, a dry run or an error was
    rewritten as "sluicegate -C FOLDER users": the key shown was not the key. Only a command's name
    after "sluicegate " makes a hint."""
    monkeypatch.chdir(tmp_path)
    shown = 'failed ["sluicegate users","2024-01-01"] after 3 attempt(s): entity \'sluicegate x\' is gone'
    assert typed_here(shown, Path("/srv/p")) == shown
    assert typed_here("(sluicegate status)", Path("/srv/p")) == "(sluicegate -C /srv/p status)"
