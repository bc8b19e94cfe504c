"""A blocks task's request from atd-mds-style arguments (``sluicegate blocks``, the service's
``POST /tasks/{name}/runs``), or for a schedule's tick, checked before any run."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from . import validate
from .exceptions import ConfigError, SluicegateError, UsageError
from .specs import Project, TaskBase

if TYPE_CHECKING:
    from .timeblocks import BlockRequest

log = logging.getLogger(__name__)
# How far back a scheduled tick reaches at most: the hours of a request's most blocks (timeblocks.MAX_BLOCKS,
# less a margin for the zones whose offset changes by half hours), so its range is never refused as too long.
SCHEDULE_REACH = dt.timedelta(hours=49_000)


def blocks_task(project: Project, name: str) -> TaskBase:
    """The blocks task called ``name``."""
    task = project.task(name)
    if task.kind != "blocks":
        kind = validate.a_or_an(task.kind)
        raise UsageError(f"task {name!r} is {kind} task; this applies to blocks tasks only")
    return task


def blocks_request(
    project: Project,
    task: TaskBase,
    *,
    time_max: str,
    time_min: str | None = None,
    interval: int = 1,
    key: str | None = None,
    stages: Sequence[str] = (),
    skip: Sequence[str] = (),
    force: bool = False,
    incomplete_only: bool = False,
) -> tuple[BlockRequest, str | None]:
    """A blocks request from atd-mds-style arguments: times as yyyy-mm-dd-hh (the task's zone) or ISO 8601,
    and the warning naming the blocks it leaves out because they have not settled (None if none).

    The range is ``(time_min, time_max]``; without ``time_min`` it is ``interval`` hours back
    from ``time_max``. ``key`` is ``NAME=VALUE`` (``provider=lime``) or a bare value.
    """
    from . import timeblocks  # not at the command line's start-up

    zone = str(getattr(task, "zone", "UTC"))
    high = timeblocks.parse_time(time_max, zone, "time_max")
    low = None if time_min is None else timeblocks.parse_time(time_min, zone, "time_min")
    low, high = timeblocks.request_range(high, time_min=low, interval=interval)
    value = None
    if key is not None:
        name, sep, value = key.rpartition("=")
        if sep and name != getattr(task, "key", None):
            raise UsageError(
                f"task {task.name} has no key {name!r}; its key is {getattr(task, 'key', None)!r}"
            )
    request = timeblocks.BlockRequest(
        time_min=low,
        time_max=high,
        key_value=value,
        stages=tuple(stages) or None,
        skip=tuple(skip),
        force=force,
        incomplete_only=incomplete_only,
    )
    from .drivers import blocks, blocks_plan

    assert isinstance(task, blocks.Task)
    blocks.chosen_stages(task, request)  # unknown stages and key values are usage errors, before any run
    blocks.key_values(task, project.settings.source_url, request)
    # empty, too long, not over (a service run was accepted (202), then failed) or none settled:
    # refused up front, as by the CLI; cut to the settled blocks
    request, _, note = blocks_plan.settled_blocks(task, request)
    return request, note


def scheduled_request(
    project: Project, task: TaskBase, tick: dt.datetime, ledger: Any
) -> BlockRequest | None:
    """What a schedule's tick at ``tick`` runs of a blocks task: the blocks that ended by the tick since
    the ledger's newest block (its frontier; with none, one block (an hour, a day) plus ``settle``
    back: an hour before a daily tick of day blocks held no midnight, so none was ever made), as
    a request; None when none of them has settled yet (nothing to do, logged at info). The request
    also runs what is due on the ledger before the frontier (``sweep``): a stage that failed, a block
    given back at the time limit or whose run was killed, which no later tick's range holds.

    The range reaches back at most :data:`SCHEDULE_REACH` (a longer one is refused as too long),
    said in a warning naming the blocks left out."""
    from . import timeblocks  # not at the command line's start-up
    from .drivers import blocks

    assert isinstance(task, blocks.Task)
    settle = dt.timedelta(seconds=task.settle)
    frontier = ledger.blocks.frontier(task.name)
    first = timeblocks.HOUR if task.grain == "hour" else 24 * timeblocks.HOUR  # a block's length
    low = frontier if frontier is not None else tick - first - settle
    if tick - low > SCHEDULE_REACH:
        older = f"--time-min {low.isoformat()} --time-max {(tick - SCHEDULE_REACH).isoformat()}"
        log.warning(
            "%s: the scheduled tick at %s runs the blocks of its last %d hours only, a request's most;"
            " run the older ones with 'sluicegate blocks %s %s'",
            task.name, tick.isoformat(), SCHEDULE_REACH // timeblocks.HOUR, task.name, older,
        )  # fmt: skip
        low = tick - SCHEDULE_REACH
    found = timeblocks.blocks_between(low, tick, grain=task.grain, zone=task.zone) if low < tick else []
    if not [b for b in found if b.end <= dt.datetime.now(dt.UTC) - settle]:
        log.info(
            "%s: the scheduled tick at %s has no block to run: none ended after %s has settled (settle %s)",
            task.name, tick.isoformat(), low.isoformat(), settle,
        )  # fmt: skip
        return None
    request, _note = blocks_request(project, task, time_max=tick.isoformat(), time_min=low.isoformat())
    return dataclasses.replace(request, sweep=True)  # and what is due before the frontier: retries


def refused(ledger: Any, task: TaskBase, error: SluicegateError) -> None:
    """Record on the ledger that a schedule's request of ``task`` was refused (:func:`scheduled_request`
    raised ``error``): ``sluicegate status`` shows it as the error that stopped the task's last run,
    until a run of the task succeeds. The ledger out of reach: a warning (the caller reports the error)."""
    try:
        ledger.runs.record_task_error(task.name, str(error), config=isinstance(error, ConfigError))
    except SluicegateError as exc:
        log.warning("task %s: could not record its refused request on the ledger: %s", task.name, exc)
