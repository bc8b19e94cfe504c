"""Schedule ticks: the most recent tick of a cron ``schedule``, or of a fixed period ``every``.

A tick is an instant in UTC. Cron ticks follow the task's ``schedule_zone`` (so ``0 6 * * *``
in Europe/Brussels stays at 06:00 local across DST). A wall time the clocks skip ticks when they
have jumped past it; one that comes twice (the clocks go back) ticks once, at its first pass, for a
schedule of fixed hours and minutes (``30 2 * * *``, ``0 0 * * *`` in America/Havana), and at both
for one whose minute or hour is ``*`` (``*/30 * * * *``), as Vixie cron does. ``every`` ticks are
multiples of the period since the Unix epoch, so ``every = "5m"`` ticks at :00, :05, :10 in UTC, on every
worker alike, whenever it started.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from typing import Any

from .partitions import zone_of


def latest_tick(schedule: str, zone: str, now: dt.datetime) -> dt.datetime:
    """The most recent tick of the cron ``schedule`` at or before ``now`` (aware, UTC)."""
    tick = _latest_pass(schedule, zone, now)
    while _second_pass(schedule, zone, tick):  # a fixed time's second pass is no tick: the one before
        tick = _latest_pass(schedule, zone, tick - dt.timedelta(microseconds=1))
    return tick


def next_tick(schedule: str, zone: str, after: dt.datetime) -> dt.datetime:
    """The first tick of the cron ``schedule`` after ``after`` (aware, UTC)."""
    from croniter import croniter

    ticks = croniter(schedule, after.astimezone(zone_of(zone)))
    tick: dt.datetime = ticks.get_next(dt.datetime).astimezone(dt.UTC)
    while _second_pass(schedule, zone, tick):
        tick = ticks.get_next(dt.datetime).astimezone(dt.UTC)
    return tick


def _second_pass(schedule: str, zone: str, tick: dt.datetime) -> bool:
    """Whether ``tick`` is the second pass of a wall time the clocks went back over, for a schedule
    that ticks once there: ``0 0 * * *`` in America/Havana ticked at both midnights of 2024-11-03,
    so its windows of width = "schedule" were 24 and 1 hours, not the local day's 25. Vixie cron runs
    a job of fixed minutes and hours once when a wall time repeats; one whose minute or hour field
    starts with ``*`` runs in both passes, as the hours do go by."""
    local = tick.astimezone(zone_of(zone))
    if not local.fold or local.replace(fold=0).astimezone(dt.UTC) == tick:
        return False  # not a repeated wall time (zoneinfo sets fold only on the second pass)
    return _fixed_time(schedule)


@functools.lru_cache(maxsize=256)
def _fixed_time(schedule: str) -> bool:
    """Whether neither the minute nor the hour field of ``schedule`` starts with ``*`` (@daily: 0 0)."""
    from croniter import croniter

    minute, hour = croniter(schedule).expressions[:2]
    return not (str(minute).startswith("*") or str(hour).startswith("*"))


def _latest_pass(schedule: str, zone: str, now: dt.datetime) -> dt.datetime:
    """The most recent time at or before ``now`` (aware, UTC) whose wall time the cron ``schedule``
    names, either pass of one that comes twice."""
    from croniter import croniter

    local = now.astimezone(zone_of(zone))
    tick: dt.datetime = croniter(schedule, local + dt.timedelta(microseconds=1)).get_prev(dt.datetime)
    if tick.astimezone(dt.UTC) > now:  # a microsecond before a tick in the hour a fall-back repeats:
        # "0 * * * *" gave 02:00 CET (01:00 UTC) for 00:59:59.999999 UTC, so the window of width =
        # "schedule" before that tick was empty. Start before the repeated hour; step on below.
        earlier = (now - dt.timedelta(hours=3)).astimezone(zone_of(zone))
        tick = croniter(schedule, earlier).get_prev(dt.datetime)
    # croniter's get_prev goes wrong in the hour a fall-back repeats: at 02:00 CET (01:00 UTC) on
    # Europe/Brussels' fall-back day "*/30 * * * *" gave 02:00 CEST (00:00 UTC), an hour back, and
    # "30 2 * * *" the day before. Its get_next is right there, so step on to the last tick due.
    # (Compared in UTC: aware times of one zone compare by wall clock, blind to the fold.)
    ticks = croniter(schedule, tick)
    while (following := ticks.get_next(dt.datetime)).astimezone(dt.UTC) <= now:
        tick = following
    return tick.astimezone(dt.UTC)


def longest_gap(schedule: str, zone: str, now: dt.datetime, *, beyond: float) -> float:
    """The longest time (seconds) between two ticks of the cron ``schedule`` over the year from
    ``now`` (every month length, leap day and clock change), up to the first tick after it
    (0 0 29 2 *: four years), when it is longer than ``beyond`` seconds; 0.0 when none is.

    The gap around an instant is the time from the latest tick to the next; instants ``beyond``
    apart (at most 400 of them: a shorter ``beyond`` is read as a year's 400th, 22 h) fall in every
    gap longer than that, so each is found exactly, at a few croniter steps per instant (reading
    every tick of a year cost 0.23 s for an hourly schedule, on every command that loads it).
    A gap of 22 h or less comes back every day (a day without a tick is a gap of a day or more)
    but around a clock change, which is read too (0 3-23 * * * in America/New_York: 5 h once)."""

    def around(at: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
        tick = latest_tick(schedule, zone, at)
        return tick, next_tick(schedule, zone, tick)

    step = dt.timedelta(seconds=max(beyond, 366 * 86400 / 400))
    year = now + dt.timedelta(days=366)
    changes = [a for t in clock_changes(zone, now, year) for a in (t - dt.timedelta(seconds=1), t)]
    at, gap = now, 0.0
    while at <= year or changes:
        try:
            tick, following = around(changes.pop() if at > year else at)
        except ValueError:  # croniter's CroniterBadDateError: the schedule's years end ("... 2020-2027")
            at = year + step  # then only the clock changes before that end
            continue
        gap = max(gap, (following - tick).total_seconds())
        if at <= year:
            at = max(at + step, following)
    return gap if gap > beyond else 0.0


def clock_changes(zone: str, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """The instants (to the second) in ``[start, end]`` at which ``zone``'s offset from UTC changes."""
    tz, found = zone_of(zone), []
    day = dt.timedelta(days=1)
    at = start
    while at < end:
        low, high = at, min(at + day, end)
        if low.astimezone(tz).utcoffset() != high.astimezone(tz).utcoffset():
            while (high - low).total_seconds() > 1:
                middle = low + (high - low) / 2
                same = middle.astimezone(tz).utcoffset() == low.astimezone(tz).utcoffset()
                low, high = (middle, high) if same else (low, middle)
            found.append(high)
        at += day
    return found


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
