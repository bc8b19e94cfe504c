"""Where the CRT sends small PUTs: always where botocore sends every other request."""

from __future__ import annotations

import pytest

from sluicegate.config import DestinationSettings
from sluicegate.destinations import open_destination


def _crt(monkeypatch: pytest.MonkeyPatch, url: str, **settings: str) -> tuple[str, str] | None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    dest = open_destination(DestinationSettings(url=url, **settings))  # type: ignore[arg-type]
    crt = dest._crt  # type: ignore[attr-defined]
    return None if crt is None else (crt.host, crt.base)


def test_aws_buckets_are_virtual_hosts_of_the_region(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    assert _crt(monkeypatch, "s3://open-data/x", region="eu-west-1") == (
        "open-data.s3.eu-west-1.amazonaws.com",
        "",
    )
    # Dotted names are not valid TLS virtual hosts: botocore keeps them.
    assert _crt(monkeypatch, "s3://open.data/x", region="eu-west-1") is None


def test_an_endpoint_from_the_environment_is_where_the_crt_goes_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore reads AWS_ENDPOINT_URL_S3; a CRT that went to AWS instead would put the files
    in another store than every other request (HEAD, listing, deletes) looks at."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9999")
    assert _crt(monkeypatch, "s3://open-data/x", region="eu-west-1") == ("127.0.0.1:9999", "/open-data")
    assert _crt(monkeypatch, "s3://b", endpoint_url="https://store.example:8443/s3") == (
        "store.example:8443",
        "/s3/b",
    )


def test_a_proxy_or_the_setting_keeps_puts_on_botocore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert _crt(monkeypatch, "s3://open-data/x", region="eu-west-1") is None
    monkeypatch.delenv("HTTPS_PROXY")
    for name in ("HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert _crt(monkeypatch, "s3://open-data/x", region="eu-west-1", s3_client="boto3") is None
