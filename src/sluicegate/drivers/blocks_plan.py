"""The dry run of a blocks request: which (block, stage) would run now, and why.

It reads the range's rows and simulates what the run would do, without writing: new blocks
get their rows, ``--force`` resets done stages, ``--incomplete-only`` takes parked ones,
and a stage runs when it is pending, chosen, due, and its previous stage is done or runs
before it in the same run.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..timeblocks import Block, BlockRequest

if TYPE_CHECKING:
    from .blocks import Task

RUNS = "runs"  # the state of a stage this run would run (its later stages may follow)


def plan_entries(
    task: Task,
    request: BlockRequest,
    chosen: Sequence[str],
    keys: Sequence[str],
    blocks: Sequence[Block],
    rows: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """``[{key, block, start, end, stage, reason}]`` for each (block, stage) the request would run."""
    existing = {(r["key_value"], r["block_start"], r["stage"]): r for r in rows}
    first_forced = min(i for i, s in enumerate(task.stages) if s.name in chosen) if request.force else None
    out = []
    for block in blocks:
        for key in sorted(keys):
            states = [
                _state(existing.get((key, block.start, s.name)), s.name in chosen, request)
                for s in task.stages
            ]
            if first_forced is not None and all(st == "done" for st, _ in states[:first_forced]):
                states[first_forced:] = [_forced(st) for st in states[first_forced:]]
            out += _runs(task, block, key, states, chosen)
    return out


def _state(row: dict[str, Any] | None, chosen: bool, request: BlockRequest) -> tuple[str, str]:
    """``(status, reason)`` of one (block, stage) before the run."""
    if row is None:
        return "pending", "new"
    status = row["status"]
    if status == "failed" and chosen and request.incomplete_only:
        return "pending", "incomplete"
    if status == "running":
        return ("pending", "lease expired") if row["expired"] else ("running", "")
    if status == "pending" and row["backing_off"]:
        return "backing off", ""
    return status, "retry" if status == "pending" and row["attempts"] else "pending"


def _forced(state: tuple[str, str]) -> tuple[str, str]:
    status, _reason = state
    return state if status == "running" else ("pending", "forced")


def _runs(
    task: Task, block: Block, key: str, states: list[tuple[str, str]], chosen: Sequence[str]
) -> list[dict[str, Any]]:
    out = []
    previous = "done"
    for stage, (status, reason) in zip(task.stages, states, strict=True):
        if status == "pending" and stage.name in chosen and previous in ("done", RUNS):
            out.append(
                {
                    "key": key,
                    "block": block.label,
                    "start": block.start.isoformat(),
                    "end": block.end.astimezone(dt.UTC).isoformat(),
                    "stage": stage.name,
                    "reason": reason,
                }
            )
            status = RUNS
        if status == "no_data":
            break
        previous = status
    return out
