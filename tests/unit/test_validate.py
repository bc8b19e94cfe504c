"""Small helpers of sluicegate.validate."""

from __future__ import annotations


def test_a_kind_is_named_with_its_article() -> None:
    from sluicegate.validate import a_or_an

    assert [a_or_an(k) for k in ("aggregate", "incremental", "blocks", "evaluation field")] == [
        "an aggregate", "an incremental", "a blocks", "an evaluation field",
    ]  # fmt: skip
