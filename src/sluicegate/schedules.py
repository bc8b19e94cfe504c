"""Schedule ticks: the most recent tick of a cron ``schedule``, or of a fixed period ``every``.

A tick is an instant in UTC. Cron ticks follow the task's ``schedule_zone`` (so ``0 6 * * *``
in Europe/Brussels stays at 06:00 local across DST); ``every`` ticks are multiples of the
period since the Unix epoch, so ``every = "5m"`` ticks at :00, :05, :10 in UTC, on every
worker alike, whenever it started.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from .partitions import zone_of


def latest_tick(schedule: str, zone: str, now: dt.datetime) -> dt.datetime:
    """The most recent tick of the cron ``schedule`` at or before ``now`` (aware, UTC)."""
    from croniter import croniter

    local = now.astimezone(zone_of(zone))
    tick: dt.datetime = croniter(schedule, local + dt.timedelta(microseconds=1)).get_prev(dt.datetime)
    return tick.astimezone(dt.UTC)


def every_tick(every: float, now: dt.datetime) -> dt.datetime:
    """The most recent multiple of ``every`` seconds since the epoch at or before ``now`` (UTC)."""
    seconds = math.floor(now.timestamp() / every) * every
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def due_tick(task: Any, now: dt.datetime) -> dt.datetime | None:
    """The latest tick of a task's ``schedule`` (cron) or ``every`` (aggregate tasks); None for neither."""
    if task.schedule:
        return latest_tick(task.schedule, task.schedule_zone, now)
    every = getattr(task, "every", None)
    return every_tick(every, now) if every else None
