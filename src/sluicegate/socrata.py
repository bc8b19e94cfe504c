"""A publish callable for blocks tasks: upsert a block's records into a Socrata dataset.

Use it in a task's ``[publish]`` as ``callable = "sluicegate.socrata:upsert"``, with these
settings in its config (values may be Fernet tokens):

``url``
    the portal, e.g. ``https://data.austintexas.gov`` (required);
``dataset``
    the dataset id, e.g. ``abcd-1234``; rows are posted to ``<url>/resource/<dataset>.json``
    (required); the dataset's row identifier makes the post an upsert;
``app_token``, ``username``, ``password``
    sent as ``X-App-Token`` and HTTP basic authentication (optional);
``columns``
    the record fields to send (default: every field);
``batch``
    records per request, 1 to 100000 (default 1000); ``timeout`` per request, seconds or a
    duration such as ``"90s"`` (default 60).

It returns the portal's counts: ``total`` records, ``processed`` (rows created, updated or
deleted) and ``errors`` (the portal's ``Errors``), which the stage records. A 5xx answer and
network errors are transient (the publish stage is retried with backoff, and nothing before
it runs again); a 4xx answer is terminal. So is an answer without the upsert's counts (an
empty object, another API's answer, a redirect, which is not followed): nothing says the rows
were stored, so the block is not recorded as published.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from . import httpclient, validate
from .exceptions import ConfigError, DestinationUnavailable, TerminalError
from .masking import mask_url
from .secrets import reveal
from .timeblocks import StageBlock


def upsert(block: StageBlock, records: Iterable[dict[str, Any]], config: Mapping[str, Any]) -> dict[str, int]:
    """Post ``records`` to the dataset in batches; return the summed counts."""
    for name in ("url", "dataset"):
        if name not in config:
            raise ConfigError(f"sluicegate.socrata:upsert for {block.key_value or block.task}: set {name}")
    url = f"{reveal(config['url']).rstrip('/')}/resource/{reveal(config['dataset'])}.json"
    headers = {"X-App-Token": reveal(config["app_token"])} if config.get("app_token") else {}
    auth = (
        (reveal(config["username"]), reveal(config.get("password", ""))) if config.get("username") else None
    )
    where = f"sluicegate.socrata:upsert for {block.key_value or block.task}"
    columns = config.get("columns")
    if columns is not None and not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        raise ConfigError(f"{where}: columns {columns!r} is not a list of field names")
    # batch = 0 posted nothing and returned a total of 0, so the stage recorded "no data".
    size = validate.whole_number(config.get("batch", 1000), f"{where}: batch", maximum=100_000)
    timeout = validate.parse_duration(config.get("timeout", 60), where=f"{where}: timeout")
    if timeout <= 0:
        raise ConfigError(f"{where}: timeout {config['timeout']!r} is not a positive number of seconds")
    counts = {"total": 0, "processed": 0, "errors": 0}
    rows = iter(records)
    with httpclient.client(timeout=timeout, headers=headers, auth=auth) as client:
        while batch := list(itertools.islice(rows, size)):
            if columns:
                batch = [{c: r.get(c) for c in columns} for r in batch]
            answer = _post(client, url, batch)
            counts["total"] += len(batch)
            counts["processed"] += sum(answer[k] for k in ("Rows Created", "Rows Updated", "Rows Deleted"))
            counts["errors"] += answer["Errors"]
    return counts


COUNTS = ("Rows Created", "Rows Updated", "Rows Deleted", "Errors")


def _post(client: httpx.Client, url: str, batch: list[dict[str, Any]]) -> dict[str, int]:
    shown = mask_url(url)
    try:
        response = client.post(url, json=batch)
    except httpx.HTTPError as exc:
        raise DestinationUnavailable(f"{shown}: {type(exc).__name__}: {exc}; will retry") from None
    if response.status_code >= 500 or response.status_code == 429:
        raise DestinationUnavailable(f"{shown}: HTTP {response.status_code}; will retry")
    if response.status_code >= 400:
        advice = httpclient.refused(
            response.status_code, "app_token, username and password", "url and dataset"
        )
        raise TerminalError(f"{shown}: HTTP {response.status_code} {response.text[:200]}{advice}")
    if response.is_redirect:  # not followed: the rows and credentials would go where nobody configured
        fix = "set url to the portal it names if that is yours"
        raise TerminalError(
            httpclient.redirected(response.status_code, response.headers.get("Location"), shown, fix)
        )
    try:
        answer = response.json()
    except ValueError:
        raise TerminalError(f"{shown} answered with something that is not JSON") from None
    # {} or another API's answer counted 0 rows processed, and the block was recorded published.
    counts = {k: answer.get(k, 0) for k in COUNTS} if isinstance(answer, dict) else {}
    if not (
        isinstance(answer, dict)
        and any(k in answer for k in COUNTS)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values())
    ):
        raise TerminalError(
            f"{shown} answered without upsert counts ({', '.join(COUNTS)}): {response.text[:200]!r};"
            " check that url is the portal and dataset the id of a dataset you may write"
        )
    return counts
