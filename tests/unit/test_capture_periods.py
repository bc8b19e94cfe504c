"""The local periods a captured run of bins marks (``capture._periods``)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sluicegate.capture import _periods

UTC = dt.UTC


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_a_run_marks_each_local_day_it_touches_and_never_a_skipped_one() -> None:
    apia = ZoneInfo("Pacific/Apia")  # 2011-12-29 23:59 (UTC-10) was followed by 2011-12-31 00:00 (UTC+14)
    days = list(_periods(_utc("2011-12-30T09:00"), _utc("2011-12-30T10:00"), apia, "day"))
    assert days == [dt.date(2011, 12, 29), dt.date(2011, 12, 31)]
    kathmandu = ZoneInfo("Asia/Kathmandu")  # +05:45: 18:15 UTC is local midnight
    days = list(_periods(_utc("2024-03-08T18:00"), _utc("2024-03-08T18:15"), kathmandu, "day"))
    assert days == [dt.date(2024, 3, 8), dt.date(2024, 3, 9)]
    assert list(_periods(_utc("2024-03-08T18:15"), _utc("2024-03-08T18:15"), kathmandu, "day")) == [
        dt.date(2024, 3, 9)
    ]


def test_an_hourly_run_marks_each_local_hour_it_touches() -> None:
    kathmandu = ZoneInfo("Asia/Kathmandu")
    hours = list(_periods(_utc("2024-03-08T10:00"), _utc("2024-03-08T10:45"), kathmandu, "hour"))
    assert [h.isoformat() for h in hours] == ["2024-03-08T15:00:00+05:45", "2024-03-08T16:00:00+05:45"]
    new_york = ZoneInfo("America/New_York")  # 2024-11-03: the 01:00 hour happens twice
    hours = list(_periods(_utc("2024-11-03T05:00"), _utc("2024-11-03T06:45"), new_york, "hour"))
    assert [(h.hour, h.utcoffset()) for h in hours] == [
        (1, dt.timedelta(hours=-4)), (1, dt.timedelta(hours=-5))
    ]  # fmt: skip
