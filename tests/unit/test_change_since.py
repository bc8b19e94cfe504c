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


@pytest.mark.parametrize("text", ["yesterday", "", "5f0c3e9a", "2024-13-01"])
def test_anything_else_is_a_usage_error_naming_both_forms(text: str) -> None:
    with pytest.raises(UsageError, match=r"neither a time .* nor a run id"):
        parse_since(text)
