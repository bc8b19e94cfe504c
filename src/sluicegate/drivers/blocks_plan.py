"""The dry run of a blocks request: which (block, stage) would run now, and why.

It reads the range's rows and simulates what the run would do, without writing: new blocks
get their rows, ``--force`` resets done stages, ``--incomplete-only`` takes parked ones,
and a stage runs when it is pending, chosen, due, and its previous stage is done or runs
before it in the same run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigError, TerminalError
from ..ledger import BlockStore, RangeQuery
from ..timeblocks import Block, BlockRequest, blocks_between, settled

if TYPE_CHECKING:
    from .blocks import Task

log = logging.getLogger(__name__)

LONGEST = dt.timedelta(hours=26)  # longer than any block (a fall-back day)

RUNS = "runs"  # the state of a stage this run would run (its later stages may follow)
PARKS = "parks"  # ... and of one it would park without running it (its attempts are used up)


class LeasesExpired(TerminalError):
    """A (block, stage) whose leases kept expiring (its worker died each time): parked, not run."""

    def __init__(self, attempts: int, task: str) -> None:
        super().__init__(
            f"gave up after {attempts} attempts (leases expired: the worker died or ran out of "
            f"time); run 'sluicegate blocks {task}' with --incomplete-only to retry"
        )


def settled_blocks(task: Task, request: BlockRequest) -> tuple[BlockRequest, list[Block], str | None]:
    """The request cut to its blocks that ended ``settle`` ago or more, those blocks, and the
    warning naming the blocks left out (None when none is).

    The later ones are left out, with a warning: a cron asking every hour for the hours up to
    now runs each block once it has settled (its range reaching back beyond ``settle``). A range
    whose last block is not over, or none of whose blocks has settled, is a UsageError.
    """
    blocks = blocks_between(request.time_min, request.time_max, grain=task.grain, zone=task.zone)
    ready = settled(blocks, dt.datetime.now(dt.UTC), task.settle)
    if len(ready) == len(blocks):
        return request, ready, None
    note = (
        f"{task.name}: {len(blocks) - len(ready)} block(s) from {blocks[len(ready)].label} on left out: "
        f"they ended less than settle ({dt.timedelta(seconds=task.settle)}) ago, and records may "
        "still come; a later request that covers them runs them"
    )
    log.warning("%s", note)
    return dataclasses.replace(request, time_max=ready[-1].end), ready, note


def plan_entries(
    task: Task,
    request: BlockRequest | None,
    chosen: Sequence[str],
    keys: Sequence[str],
    blocks: Sequence[Block],
    rows: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """``[{key, block, start, end, stage, reason}]`` for each (block, stage) the request would run
    (``parks``: one it would park unrun, its attempts used up). Without a request (``sluicegate
    run``), the ``blocks`` of the ledger's ``rows``: a block missing for a key value is not made."""
    existing = {(r["key_value"], r["block_start"], r["stage"]): r for r in rows}
    force = request is not None and request.force
    first_forced = min(i for i, s in enumerate(task.stages) if s.name in chosen) if force else None
    out = []
    for block in blocks:
        for key in sorted(keys):
            if request is None and (key, block.start, task.stages[0].name) not in existing:
                continue
            states = [
                _state(existing.get((key, block.start, s.name)), s.name in chosen, request, task.max_attempts)
                for s in task.stages
            ]
            if first_forced is not None and all(st == "done" for st, _ in states[:first_forced]):
                states[first_forced:] = [_forced(st) for st in states[first_forced:]]
            out += _runs(task, block, key, states, chosen)
    return out


def ledger_blocks(
    task: Task, store: BlockStore, where: RangeQuery
) -> tuple[list[Block], list[dict[str, Any]]]:
    """The blocks of the ledger's rows in ``where`` (a run without a request works on those), and the rows."""
    rows = store.rows(where)
    spans = sorted({(r["block_start"], r["block_end"]) for r in rows})
    return [Block(start=a, end=b, zone=task.zone, grain=task.grain) for a, b in spans], rows


def _state(
    row: dict[str, Any] | None, chosen: bool, request: BlockRequest | None, max_attempts: int
) -> tuple[str, str]:
    """``(status, reason)`` of one (block, stage) before the run."""
    if row is None:
        return "pending", "new"
    status = row["status"]
    if status == "failed" and chosen and request is not None and request.incomplete_only:
        return "pending", "incomplete"
    if status == "running" and not row["expired"]:
        return "running", ""
    if status == "pending" and row["backing_off"]:
        return "backing off", ""
    attempts = row["attempts"] + (1 if status == "running" and row["alone"] else 0)  # as the claim counts
    if status in ("pending", "running") and attempts >= max_attempts:  # the run parks it, unrun
        why = "leases expired" if status == "running" else "max_attempts lowered"
        return PARKS, f"its {attempts} attempts are used up ({why})"
    if status == "running":
        return "pending", "lease expired"
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
        if status in ("pending", PARKS) and stage.name in chosen and previous in ("done", RUNS):
            out.append(
                {
                    "key": key,
                    "block": block.label,
                    "start": block.start.isoformat(),
                    "end": block.end.astimezone(dt.UTC).isoformat(),
                    "stage": stage.name,
                    "reason": reason,
                    **({"parks": True} if status == PARKS else {}),
                }
            )
            status = RUNS if status == "pending" else "failed"
        if status == "no_data":
            break
        previous = status
    return out


def check_grain(task: Task, store: BlockStore, where: RangeQuery, blocks: Sequence[Block]) -> None:
    """Refuse a request whose blocks overlap rows of other blocks (ConfigError): the task's ``grain``
    or ``zone`` changed since they were made. Rows are keyed by their start, so the day starting
    at an hour block's start was that hour's row, ``done``, and the day was never exported."""
    if not blocks:
        return
    low, high = blocks[0].start, blocks[-1].end
    wanted = {(b.start, b.end) for b in blocks}
    near = dataclasses.replace(where, time_min=low, time_max=high + LONGEST)
    for start, end in sorted(store.spans(near)):
        if start < high and (start, end) not in wanted:
            raise _changed(task, start, end)


def check_claims(task: Task, claims: Sequence[Any]) -> None:
    """The same for claimed rows (a run without a range works on what the ledger holds): each must
    be a block of the task's grain and zone, or its file would be named as one (24 hours of a
    day written to the day's one path)."""
    for claim in claims:
        block = claim.block
        found = blocks_between(
            block.end - dt.timedelta(seconds=1), block.end, grain=task.grain, zone=task.zone
        )
        if [(b.start, b.end) for b in found] != [(block.start, block.end)]:
            raise _changed(task, block.start, block.end)


def _changed(task: Task, start: dt.datetime, end: dt.datetime) -> ConfigError:
    grain = "an hour" if task.grain == "hour" else "a day"
    return ConfigError(
        f"{task.folder / 'task.toml'} grain, zone: the ledger holds a block {start:%Y-%m-%dT%H:%MZ} to"
        f" {end.astimezone(dt.UTC):%Y-%m-%dT%H:%MZ}, which is not {grain} block in {task.zone}: the"
        " grain or zone changed since it was made; put them back, or give the task a new name (folder)"
        " for blocks of the new grain"
    )
