"""``--since`` of ``sluicegate changes``: a time or a run id, else a usage error."""

from __future__ import annotations

import datetime as dt

import pytest

from sluicegate.changes import parse_since
from sluicegate.exceptions import UsageError


def test_since_is_a_time_with_utc_by_default_or_a_run_id() -> None:
    assert parse_since("2024-05-01T10:00:00Z") == dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    assert parse_since("2024-05-01 10:00") == dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    assert parse_since("2024-05-01T12:00:00+02:00") == dt.datetime(2024, 5, 1, 10, tzinfo=dt.UTC)
    run = "5f0c3e9a1b2c4d5e8f90a1b2c3d4e5f6"
    assert parse_since(run) == run
    assert parse_since("5F0C3E9A-1B2C-4D5E-8F90-A1B2C3D4E5F6") == run  # a UUID as printed elsewhere
    assert parse_since(f"{run}-000012") == (run, 12)  # a manifest's position: its run and seq
    assert parse_since(f"{run}-4294967297") == (run, 2**32 + 1)  # a helper's lane


@pytest.mark.parametrize("text", ["yesterday", "", "5f0c3e9a", "2024-13-01"])
def test_anything_else_is_a_usage_error_naming_both_forms(text: str) -> None:
    with pytest.raises(UsageError, match=r"neither a time .* nor a run id"):
        parse_since(text)


def test_manifest_numbers_stay_unique_when_a_run_is_split_among_helper_processes() -> None:
    """``FeedRun.split``: the run keeps one lane of its numbers and hands out the others."""
    from sluicegate.changes import FeedRun

    run = FeedRun()
    taken = [run.next_seq(), run.next_seq()]  # before any helper starts
    lanes = run.split(3)
    assert [lane.run for lane in lanes] == [run.run, run.run]
    taken += [run.next_seq() for _ in range(5)]
    taken += [lane.next_seq() for lane in lanes for _ in range(5)]
    inner = lanes[0].split(2)  # a lane split again (a second task of the same pass)
    taken += [n for one in (lanes[0], *inner) for n in (one.next_seq(), one.next_seq())]
    assert len(taken) == len(set(taken)) == 2 + 5 + 10 + 4 and min(taken) == 1
    assert taken[:3] == [1, 2, 3]  # the run itself goes on where it was


def test_manifest_numbers_stay_small_when_many_tasks_of_a_pass_start_helpers() -> None:
    """Each split multiplied the lanes' step: 30 tasks of one pass starting 7 helpers each gave
    seq 176848577040768610699874890, past 2^53 (JavaScript readers round it) after ~18 such tasks
    and past a 255-byte manifest name after ~240 (every manifest write, so every commit, failed)."""
    from sluicegate.changes import FeedRun

    run, taken = FeedRun(), []
    for _ in range(300):  # a pass of 300 tasks, each with 8 workers
        lanes = run.split(8)
        taken += [run.next_seq()] + [lane.next_seq() for lane in lanes for _ in range(3)]
    assert len(taken) == len(set(taken)) == 300 * 22
    assert max(taken) < 2**53, max(taken)
    assert [n for n in taken if n < 2**32] == list(range(1, 301))  # the run's own lane counts on
