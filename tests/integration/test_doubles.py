"""The HTTP doubles behave as the pipeline tests will rely on: paging, failures, upserts, records."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from doubles import HOUR_MS, Dataset, MdsDouble, MdsProvider, PortalDouble, block_ms, generate_trips

UTC = dt.UTC
BLOCK = dt.datetime(2020, 3, 1, 6, tzinfo=UTC)
NEXT_BLOCK = BLOCK + dt.timedelta(hours=1)


@pytest.fixture
def mds() -> Iterator[MdsDouble]:
    with MdsDouble(["lime", "bird"], trips_per_block=5, page_size=2) as double:
        yield double


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


def window(block: dt.datetime, hours: int = 1) -> dict[str, int]:
    start = block_ms(block)
    return {"start_time": start, "end_time": start + hours * HOUR_MS}


def fetch_all(client: httpx.Client, url: str, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Follow links.next to the end; return the trips and the number of pages."""
    trips: list[dict[str, Any]] = []
    response = client.get(url, params=params)
    pages = 0
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["version"] == "0.4.1"
        trips.extend(body["data"]["trips"])
        pages += 1
        if body["links"]["next"] is None:
            return trips, pages
        response = client.get(body["links"]["next"])


# --------------------------------------------------------------------------- MDS


def test_mds_pages_through_links_next_and_serves_the_expected_trips(
    mds: MdsDouble, client: httpx.Client
) -> None:
    first = client.get(mds.trips_url("lime"), params=window(BLOCK)).json()
    assert len(first["data"]["trips"]) == 2
    assert first["links"]["next"].startswith(f"{mds.url}/lime/trips?")

    trips, pages = fetch_all(client, mds.trips_url("lime"), window(BLOCK))

    assert pages == 3 == mds.page_count("lime", BLOCK)
    assert trips == mds.expected_trips("lime", BLOCK) == generate_trips("lime", BLOCK, 5)
    assert len({trip["trip_id"] for trip in trips}) == 5
    assert len(mds.requests("lime", BLOCK)) == 4  # the probe above and the three pages
    trip = trips[0]
    assert {"trip_id", "device_id", "vehicle_type", "trip_duration", "trip_distance", "accuracy"} <= set(trip)
    assert trip["end_time"] - trip["start_time"] == trip["trip_duration"] * 1000
    assert [f["properties"]["timestamp"] for f in trip["route"]["features"]] == [
        trip["start_time"],
        trip["end_time"],
    ]


def test_mds_assigns_trips_to_blocks_by_end_time_half_open(mds: MdsDouble, client: httpx.Client) -> None:
    first, _ = fetch_all(client, mds.trips_url("lime"), window(BLOCK))
    second, _ = fetch_all(client, mds.trips_url("lime"), window(NEXT_BLOCK))
    both, _ = fetch_all(client, mds.trips_url("lime"), window(BLOCK, hours=2))

    assert both == first + second
    assert not {t["trip_id"] for t in first} & {t["trip_id"] for t in second}
    start = block_ms(BLOCK)
    assert all(start <= t["end_time"] < start + HOUR_MS for t in first)

    # A window cut inside the block serves exactly the trips that end inside it.
    cut = first[2]["end_time"]
    head, _ = fetch_all(client, mds.trips_url("lime"), {"start_time": start, "end_time": cut})
    assert head == first[:2]


def test_mds_data_is_deterministic_per_provider_and_block(mds: MdsDouble, client: httpx.Client) -> None:
    with MdsDouble(["lime"], trips_per_block=5, page_size=5) as again:
        same, pages = fetch_all(client, again.trips_url("lime"), window(BLOCK))
    assert pages == 1
    assert same == fetch_all(client, mds.trips_url("lime"), window(BLOCK))[0]
    bird, _ = fetch_all(client, mds.trips_url("bird"), window(BLOCK))
    assert not {t["trip_id"] for t in bird} & {t["trip_id"] for t in same}
    # A bigger block is a superset: trip i does not depend on the count.
    assert {t["trip_id"] for t in same} < {t["trip_id"] for t in generate_trips("lime", BLOCK, 8)}


def test_mds_accepts_unix_seconds_as_well_as_milliseconds(mds: MdsDouble, client: httpx.Client) -> None:
    seconds = {name: value // 1000 for name, value in window(BLOCK).items()}
    by_seconds, _ = fetch_all(client, mds.trips_url("lime"), seconds)
    assert by_seconds == mds.expected_trips("lime", BLOCK)
    assert len(mds.requests("lime", BLOCK)) == 3  # seconds are matched to the same block


def test_mds_flaky_page_answers_503_the_given_number_of_times(mds: MdsDouble, client: httpx.Client) -> None:
    mds.flake("lime", BLOCK, times=2, page=2, retry_after=7)

    first = client.get(mds.trips_url("lime"), params=window(BLOCK)).json()
    second_url = first["links"]["next"]
    answers = [client.get(second_url) for _ in range(3)]

    assert [r.status_code for r in answers] == [503, 503, 200]
    assert answers[0].headers["Retry-After"] == "7"
    assert answers[2].json()["data"]["trips"] == mds.expected_trips("lime", BLOCK)[2:4]
    assert mds.flakes_left("lime", BLOCK, page=2) == 0
    assert len(mds.requests("lime", BLOCK, status=503)) == 2
    assert len(mds.requests("lime", BLOCK, status=200)) == 2
    # Other blocks and providers are unaffected.
    assert client.get(mds.trips_url("bird"), params=window(BLOCK) | {"page": 2}).status_code == 200


def test_mds_failing_block_always_answers_500_until_restored(mds: MdsDouble, client: httpx.Client) -> None:
    mds.fail_block("lime", BLOCK)

    statuses = [client.get(mds.trips_url("lime"), params=window(BLOCK)).status_code for _ in range(4)]
    assert statuses == [500] * 4
    assert client.get(mds.trips_url("lime"), params=window(NEXT_BLOCK)).status_code == 200
    assert client.get(mds.trips_url("lime"), params=window(BLOCK, hours=2)).status_code == 500
    assert len(mds.requests("lime", BLOCK, status=500)) == 5

    mds.restore_block("lime", BLOCK)
    assert fetch_all(client, mds.trips_url("lime"), window(BLOCK))[0] == mds.expected_trips("lime", BLOCK)


def test_mds_empty_block_is_one_page_without_trips(mds: MdsDouble, client: httpx.Client) -> None:
    mds.empty_block("lime", BLOCK)

    body = client.get(mds.trips_url("lime"), params=window(BLOCK)).json()

    assert body == {"version": "0.4.1", "data": {"trips": []}, "links": {"next": None}}
    assert mds.expected_trips("lime", BLOCK) == []
    assert mds.trip_count("lime", NEXT_BLOCK) == 5


def test_mds_checks_the_bearer_token(client: httpx.Client) -> None:
    providers = [MdsProvider(name="lime", token="lime-token"), MdsProvider(name="open")]
    with MdsDouble(providers) as mds:
        url, params = mds.trips_url("lime"), window(BLOCK)
        missing = client.get(url, params=params)
        wrong = client.get(url, params=params, headers={"Authorization": "Bearer nope"})
        right = client.get(url, params=params, headers={"Authorization": "Bearer lime-token"})
        open_provider = client.get(mds.trips_url("open"), params=params)

        assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
        assert missing.json()["error"] == "invalid_token"
        assert open_provider.status_code == 200
        assert [r.headers.get("authorization") for r in mds.requests("lime")] == [
            None,
            "Bearer nope",
            "Bearer lime-token",
        ]


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/lime/trips", {"start_time": 1583042400000}, 400),
        ("/lime/trips", {"start_time": 1583042400000, "end_time": 1583042400000}, 400),
        ("/lime/trips", {"start_time": "yesterday", "end_time": 1583042400000}, 400),
        ("/lime/trips", {"start_time": 1583042400000, "end_time": 1583046000000, "page": 9}, 400),
        ("/lime/trips", {"start_time": 1583042400000, "end_time": 1583046000000, "page": 0}, 400),
        ("/scoot/trips", {"start_time": 1583042400000, "end_time": 1583046000000}, 404),
        ("/lime/status_changes", {"start_time": 1583042400000, "end_time": 1583046000000}, 404),
    ],
)
def test_mds_rejects_bad_requests(
    mds: MdsDouble, client: httpx.Client, path: str, params: dict[str, Any], status: int
) -> None:
    response = client.get(f"{mds.url}{path}", params=params)
    assert response.status_code == status
    assert response.json()["error_description"]


def test_mds_records_requests_in_order_with_times(mds: MdsDouble, client: httpx.Client) -> None:
    before = time.monotonic()
    fetch_all(client, mds.trips_url("lime"), window(BLOCK))
    fetch_all(client, mds.trips_url("bird"), window(NEXT_BLOCK))

    records = mds.records
    assert [r.path for r in records] == ["/lime/trips"] * 3 + ["/bird/trips"] * 3
    assert [r.query.get("page") for r in records[:3]] == [None, "2", "3"]
    assert all(before <= a.at <= b.at for a, b in itertools.pairwise(records))
    assert len(mds.requests("bird")) == 3 and len(mds.requests("bird", BLOCK)) == 0
    mds.clear_records()
    assert mds.records == []


# --------------------------------------------------------------------------- portal

TOKEN = "app-token-123"
AUTH = (
    "user@example.org",
    "portal-password",
)
TRIPS = "mds-trips"


@pytest.fixture
def portal() -> Iterator[PortalDouble]:
    columns = {
        "trip_id": "text",
        "trip_duration": "number",
        "end_time": "calendar_date",
        "vehicle_type": "text",
    }
    with PortalDouble(
        {TRIPS: Dataset(key="trip_id", columns=columns)},
        app_token=TOKEN,
        username=AUTH[0],
        password=AUTH[1],
    ) as double:
        yield double


@pytest.fixture
def soda(portal: PortalDouble) -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, auth=AUTH, headers={"X-App-Token": TOKEN}) as http:
        yield http


def portal_rows(count: int, *, duration: int = 60) -> list[dict[str, Any]]:
    return [
        {
            "trip_id": f"trip-{i}",
            "trip_duration": duration + i,
            "end_time": f"2020-03-01T0{i % 10}:00:00.000",
            "vehicle_type": "scooter",
        }
        for i in range(count)
    ]


def counts(created: int = 0, updated: int = 0, deleted: int = 0, errors: int = 0) -> dict[str, int]:
    return {
        "By RowIdentifier": 0,
        "By SID": 0,
        "Rows Created": created,
        "Rows Updated": updated,
        "Rows Deleted": deleted,
        "Errors": errors,
    }


def test_portal_upsert_by_key_is_idempotent(portal: PortalDouble, soda: httpx.Client) -> None:
    url = portal.resource_url(TRIPS)
    first = soda.post(url, json=portal_rows(3))
    again = soda.post(url, json=portal_rows(3, duration=90))

    assert first.json() == counts(created=3)
    assert again.json() == counts(updated=3)
    assert portal.rows(TRIPS) == portal_rows(3, duration=90)
    assert portal.writes(TRIPS) == {"trip-0": 2, "trip-1": 2, "trip-2": 2}
    assert [call.rows for call in portal.upserts(TRIPS)] == [portal_rows(3), portal_rows(3, duration=90)]
    assert soda.get(url, params={"trip_id": "trip-1"}).json() == [portal_rows(3, duration=90)[1]]


def test_portal_counts_bad_rows_as_errors_and_stores_the_rest(
    portal: PortalDouble, soda: httpx.Client
) -> None:
    rows = portal_rows(5)
    rows[1]["trip_duration"] = "long"  # not a number
    rows[2]["end_time"] = "2020-03-01T02:00:00+00:00"  # a zone: not a floating timestamp
    del rows[3]["trip_id"]  # no row identifier
    rows.append({"trip_id": "trip-9", "colour": "red"})  # an undeclared column
    portal.reject_if(TRIPS, lambda row: row.get("vehicle_type") == "bicycle")
    rows.append({"trip_id": "trip-8", "vehicle_type": "bicycle"})

    answer = soda.post(portal.resource_url(TRIPS), json=rows)

    assert answer.status_code == 200
    assert answer.json() == counts(created=2, errors=5)
    assert [row["trip_id"] for row in portal.rows(TRIPS)] == ["trip-0", "trip-4"]


def test_portal_fail_next_answers_500_without_applying(portal: PortalDouble, soda: httpx.Client) -> None:
    portal.fail_next(2)
    url = portal.resource_url(TRIPS)

    statuses = [soda.post(url, json=portal_rows(2)).status_code for _ in range(3)]

    assert statuses == [500, 500, 200]
    assert portal.rows(TRIPS) == portal_rows(2)
    assert portal.writes(TRIPS) == {"trip-0": 1, "trip-1": 1}
    assert len(portal.upserts(TRIPS, status=500)) == 2
    assert [call.applied for call in portal.upserts(TRIPS)] == [False, False, True]


def test_portal_failure_after_apply_loses_only_the_answer(portal: PortalDouble, soda: httpx.Client) -> None:
    portal.fail_next(1, status=502, apply=True)
    url = portal.resource_url(TRIPS)

    lost = soda.post(url, json=portal_rows(2))
    retry = soda.post(url, json=portal_rows(2))

    assert lost.status_code == 502 and lost.json()["error"] is True
    assert retry.json() == counts(updated=2)  # the first call did store the rows
    assert len(portal.rows(TRIPS)) == 2
    assert portal.writes(TRIPS) == {"trip-0": 2, "trip-1": 2}


def test_portal_deletes_rows_marked_deleted(portal: PortalDouble, soda: httpx.Client) -> None:
    url = portal.resource_url(TRIPS)
    soda.post(url, json=portal_rows(3))

    answer = soda.post(
        url, json=[{"trip_id": "trip-1", ":deleted": True}, {"trip_id": "nope", ":deleted": True}]
    )

    assert answer.json() == counts(deleted=1, errors=1)
    assert [row["trip_id"] for row in portal.rows(TRIPS)] == ["trip-0", "trip-2"]


def test_portal_checks_app_token_and_basic_auth(portal: PortalDouble) -> None:
    url, rows = portal.resource_url(TRIPS), portal_rows(1)
    no_token = httpx.post(url, json=rows, auth=AUTH)
    bad_password = httpx.post(url, json=rows, auth=(AUTH[0], "guess"), headers={"X-App-Token": TOKEN})
    no_auth = httpx.post(url, json=rows, headers={"X-App-Token": TOKEN})
    query_token = httpx.post(url, json=rows, auth=AUTH, params={"$$app_token": TOKEN})

    assert (no_token.status_code, bad_password.status_code, no_auth.status_code) == (403, 401, 401)
    assert no_token.json()["code"] == "invalid_app_token"
    assert query_token.json() == counts(created=1)
    assert portal.writes(TRIPS) == {"trip-0": 1}
    expected = "Basic " + base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
    assert portal.calls[-1].headers["authorization"] == expected


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/resource/mds-trips.json", b'{"trip_id": "a"}', 400),
        ("/resource/mds-trips.json", b"[1, 2]", 400),
        ("/resource/mds-trips.json", b"not json", 400),
        ("/resource/other.json", b"[]", 404),
        ("/api/views/mds-trips", b"[]", 404),
        ("/api/views/mds-trips.json", b"[]", 405),
    ],
)
def test_portal_rejects_bad_requests(
    portal: PortalDouble, soda: httpx.Client, path: str, body: bytes, status: int
) -> None:
    response = soda.post(f"{portal.url}{path}", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"] is True
    assert portal.rows(TRIPS) == []
    assert portal.calls[-1].status == status


def test_portal_views_answer_the_row_identifier_and_a_dataset_without_one_appends() -> None:
    """Socrata's metadata names the row identifier's column (``rowIdentifierColumnId``); a dataset
    without one appends, so the same rows posted twice are there twice."""
    with PortalDouble({TRIPS: "trip_id", "log": Dataset(key=None)}) as portal:
        keyed = httpx.get(f"{portal.url}/api/views/{TRIPS}.json").json()
        [column] = [c for c in keyed["columns"] if c["id"] == keyed["rowIdentifierColumnId"]]
        assert column["fieldName"] == "trip_id"
        bare = httpx.get(f"{portal.url}/api/views/log.json").json()
        assert "rowIdentifierColumnId" not in bare and bare["id"] == "log"
        for _ in range(2):
            answer = httpx.post(portal.resource_url("log"), json=portal_rows(2))
            assert answer.json() == counts(created=2)
        assert len(portal.rows("log")) == 4 and portal.upserts("log", status=200)[0].rows == portal_rows(2)
    with PortalDouble(views=False) as lacking:
        assert httpx.get(f"{lacking.url}/api/views/mds-trips.json").status_code == 404


def test_portal_fail_next_after_answers_the_first_batches_first(
    portal: PortalDouble, soda: httpx.Client
) -> None:
    portal.fail_next(1, status=503, after=1)
    url = portal.resource_url(TRIPS)
    statuses = [soda.post(url, json=portal_rows(1)).status_code for _ in range(3)]
    assert statuses == [200, 503, 200]
