"""A lost connection on any S3 call the destination makes is a transient error of the
partitions in hand, never an exception that ends the run (found by bench/soak.py: the HEAD that
reads an object's ETag before a conditional upload let botocore's ConnectionClosedError out,
and the worker exited with a traceback)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from sluicegate.config import DestinationSettings
from sluicegate.destinations import open_destination
from sluicegate.exceptions import DestinationUnavailable

if TYPE_CHECKING:
    from plugins.faultproxy import FaultProxy


@pytest.fixture
def through_proxy(
    seaweed_bucket: tuple[str, str, str, str], fault_proxy: Callable[[str], FaultProxy]
) -> tuple[FaultProxy, object]:
    endpoint, bucket, key, secret = seaweed_bucket
    proxy = fault_proxy(endpoint)
    settings = DestinationSettings(
        url=f"s3://{bucket}/open-data", endpoint_url=proxy.url, access_key_id=key, secret_access_key=secret
    )
    return proxy, open_destination(settings)


CALLS: dict[str, Callable[[object], object]] = {
    "sync": lambda dest: dest.sync([_pending(dest)]),  # type: ignore[attr-defined]
    "exists": lambda dest: dest.exists("a/one.csv", 5),  # type: ignore[attr-defined]
    "read": lambda dest: dest.read("a/one.csv"),  # type: ignore[attr-defined]
}


def _pending(dest: object) -> object:
    """A staged file as publish leaves it when the write must wait for the held claim."""
    staged = dest.stage("a/one.csv")  # type: ignore[attr-defined]
    staged.file.write(b"id\n1\n")
    staged.pending = True
    return staged


@pytest.mark.parametrize("call", sorted(CALLS))
def test_each_call_is_transient_when_the_endpoint_goes_away(
    through_proxy: tuple[FaultProxy, object], call: str
) -> None:
    proxy, dest = through_proxy
    assert dest.conditional()  # type: ignore[attr-defined]  (probed while the endpoint is up)
    proxy.down()
    with pytest.raises(DestinationUnavailable, match=r"a/one\.csv.*will retry"):
        CALLS[call](dest)
    proxy.up()
    assert not dest.exists("a/one.csv", 5)  # type: ignore[attr-defined]  nothing half-written
