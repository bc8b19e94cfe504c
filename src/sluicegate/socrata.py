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
    records per request, 1 to 100000 (default 1000); ``timeout`` per read, seconds or a
    duration such as ``"90s"`` (default 60; a whole answer must arrive within 4 times that);
``row_identifier``
    the dataset's row identifier field, only for a portal without Socrata's views API
    (optional; where the API answers, it must agree);
``max_answer_bytes``
    the most an answer may hold once decoded, from 1024 (default 268435456, 256 MiB; the
    portal's are a few hundred bytes): a larger one is terminal, read no further.

Before its first post to a dataset, a process reads the dataset's metadata
(``<url>/api/views/<dataset>.json``) and refuses to publish (terminal) when the dataset has
no row identifier: Socrata then appends, and a publish retried after a failed batch would add
the rows posted before it again. It also refuses ``columns`` that leave the row identifier
out. The metadata is read with the posts' credentials and answered like a post: 5xx and
network errors are transient, 4xx terminal; a 404 is terminal too unless ``row_identifier``
says which field the dataset upserts by (a portal without the views API cannot tell; that
answer is not kept, so each publish goes by its own config's ``row_identifier``).
A record without the row identifier is one of the portal's ``Errors`` (counted, and how many
lacked it is the returned ``messages``, which the stage records); a block none of whose records
has it fails naming the field.

It returns the portal's counts: ``total`` records, ``processed`` (rows created, updated or
deleted) and ``errors`` (the portal's ``Errors``), which the stage records. A 5xx answer and
network errors are transient (the publish stage is retried with backoff, and nothing before
it runs again); a 4xx answer is terminal. So is an answer without the upsert's counts (an
empty object, another API's answer, a redirect, which is not followed): nothing says the rows
were stored, so the block is not recorded as published.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from . import httpclient, validate
from .exceptions import ConfigError, DataError, DestinationUnavailable, TerminalError
from .masking import mask_url
from .secrets import reveal
from .timeblocks import StageBlock


def upsert(block: StageBlock, records: Iterable[dict[str, Any]], config: Mapping[str, Any]) -> dict[str, Any]:
    """Post ``records`` to the dataset in batches; return the summed counts (and why records failed)."""
    for name in ("url", "dataset"):
        if name not in config:
            raise ConfigError(f"sluicegate.socrata:upsert for {block.key_value or block.task}: set {name}")
    portal, dataset = reveal(config["url"]).rstrip("/"), reveal(config["dataset"])
    url = f"{portal}/resource/{dataset}.json"
    headers = {"X-App-Token": reveal(config["app_token"])} if config.get("app_token") else {}
    auth = (
        (reveal(config["username"]), reveal(config.get("password", ""))) if config.get("username") else None
    )
    where = f"sluicegate.socrata:upsert for {block.key_value or block.task}"
    columns = config.get("columns")
    if columns is not None and not (isinstance(columns, list) and all(isinstance(c, str) for c in columns)):
        raise ConfigError(f"{where}: columns {columns!r} is not a list of field names")
    size, timeout, cap = _numbers(config, where)
    stated = config.get("row_identifier")
    if stated is not None and not (isinstance(stated, str) and stated):
        raise ConfigError(f"{where}: row_identifier {stated!r} is not a field name")
    counts: dict[str, Any] = {"total": 0, "processed": 0, "errors": 0}
    keyless = 0  # records without the row identifier: the portal's Errors, which name no reason
    rows = iter(records)
    with httpclient.client(timeout=timeout, headers=headers, auth=auth) as client:
        while batch := list(itertools.islice(rows, size)):
            if not counts["total"]:  # before the first post: a retried publish must not append
                key = _row_identifier(client, portal, dataset, stated, cap)
                if stated is not None and stated != key:
                    raise ConfigError(
                        f"{where}: row_identifier {stated!r} is not the row identifier of dataset"
                        f" {dataset}, {key}: set it to {key!r} or leave it out"
                    )
                if columns is not None and key not in columns:
                    raise ConfigError(
                        f"{where}: columns {columns!r} leave out {key}, the row identifier of dataset"
                        f" {dataset}, so no row could be matched: add {key} to columns"
                    )
            keyless += sum(r.get(key) in (None, "") for r in batch)
            if columns:
                batch = [{c: r.get(c) for c in columns} for r in batch]
            answer = _post(client, url, batch, cap)
            counts["total"] += len(batch)
            counts["processed"] += sum(answer[k] for k in ("Rows Created", "Rows Updated", "Rows Deleted"))
            counts["errors"] += answer["Errors"]
    if counts["total"] and keyless == counts["errors"] == counts["total"]:
        raise DataError(
            f"{where}: none of the {keyless} records has a {key}, the row identifier of dataset"
            f" {dataset}, so the portal rejected every one: give the records a {key} field, then"
            " rerun with --incomplete-only"
        )
    if keyless:  # the portal's Errors name no reason: say which records it could not match
        have = "has" if keyless == 1 else "have"
        counts["messages"] = [
            f"{keyless} of the {counts['total']} records {have} no {key}, the row identifier of dataset"
            f" {dataset}, which the portal rejects: give every record a {key} field, then rerun with --force"
        ]
    return counts


def _numbers(config: Mapping[str, Any], where: str) -> tuple[int, float, int]:
    """``batch``, ``timeout`` and ``max_answer_bytes``, checked before any post."""
    # batch = 0 posted nothing and returned a total of 0, so the stage recorded "no data".
    size = validate.whole_number(config.get("batch", 1000), f"{where}: batch", maximum=100_000)
    timeout = validate.parse_duration(config.get("timeout", 60), where=f"{where}: timeout")
    if timeout <= 0:
        raise ConfigError(f"{where}: timeout {config['timeout']!r} is not a positive number of seconds")
    return size, timeout, httpclient.answer_cap(config, where)


_IDENTIFIERS: dict[tuple[str, str], str] = {}
"""The row identifier's field per (portal, dataset), read once in a process's life (a refusal is
not kept: the dataset's settings may be fixed while a service runs; nor is a row_identifier a
portal without the views API was taken at its word for: it is one config's, not the dataset's)."""
_LOCK = threading.Lock()


def _row_identifier(client: httpx.Client, portal: str, dataset: str, stated: str | None, cap: int) -> str:
    """The dataset's row identifier field, from its metadata; refuse a dataset without one."""
    with _LOCK:
        known = _IDENTIFIERS.get((portal, dataset))
    if known is not None:
        return known
    url = f"{portal}/api/views/{dataset}.json"
    response = _send(client, "GET", url, None, cap)
    if response.status_code == 404 and stated is not None:
        return stated  # a portal without the views API: the user named the field (not kept)
    key = _identifier_field(_answer(response, mask_url(url)), mask_url(url), dataset)
    with _LOCK:
        _IDENTIFIERS[(portal, dataset)] = key
    return key


def _identifier_field(answer: Any, shown: str, dataset: str) -> str:
    columns = answer.get("columns") if isinstance(answer, dict) else None
    if not isinstance(answer, dict) or not isinstance(columns, list):
        raise TerminalError(
            f"{shown} answered without a dataset's metadata (columns, rowIdentifierColumnId);"
            " check that url is the portal and dataset the id of a dataset"
        )
    column_id = answer.get("rowIdentifierColumnId")
    if column_id is None:
        raise TerminalError(
            f"dataset {dataset} ({shown}) has no row identifier, so a retried post would add its rows"
            " again: set one (such as trip_id) in the dataset's settings, then rerun with --incomplete-only"
        )
    key = next(
        (c.get("fieldName") for c in columns if isinstance(c, dict) and c.get("id") == column_id), None
    )
    if not isinstance(key, str) or not key:
        raise TerminalError(f"{shown} names row identifier column {column_id!r} but no such column")
    return key


COUNTS = ("Rows Created", "Rows Updated", "Rows Deleted", "Errors")


def _post(client: httpx.Client, url: str, batch: list[dict[str, Any]], cap: int) -> dict[str, int]:
    shown = mask_url(url)
    response = _send(client, "POST", url, batch, cap)
    answer = _answer(response, shown)
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


def _send(
    client: httpx.Client, method: str, url: str, batch: list[dict[str, Any]] | None, cap: int
) -> httpx.Response:
    """The portal's answer; a failure to reach it, a 5xx or a 429 is transient; one larger than
    ``cap`` bytes decoded is terminal (the portal's are small: it is not the portal's answer)."""
    shown = mask_url(url)
    try:
        response = httpclient.send(client, method, url, json=batch, cap=cap)
    except httpx.HTTPError as exc:
        raise DestinationUnavailable(f"{shown}: {type(exc).__name__}: {exc}; will retry") from None
    except httpclient.TooLarge as exc:
        if retry := exc.transient(shown):
            raise DestinationUnavailable(retry) from None
        fix = "check that url is the portal, or raise max_answer_bytes in the stage's config"
        raise TerminalError(exc.sentence(shown, fix)) from None
    if response.status_code >= 500 or response.status_code == 429:
        raise DestinationUnavailable(f"{shown}: HTTP {response.status_code}; will retry")
    return response


def _answer(response: httpx.Response, shown: str) -> Any:
    """The JSON of a 2xx answer; a 4xx (credentials, a wrong address) or a redirect is terminal."""
    if response.status_code >= 400:
        advice = httpclient.refused(
            response.status_code, "app_token, username and password", "url and dataset"
        )
        if response.status_code == 404 and "/api/views/" in shown:
            advice += " (a portal without Socrata's views API: set row_identifier to the dataset's)"
        raise TerminalError(f"{shown}: HTTP {response.status_code} {response.text[:200]}{advice}")
    if response.is_redirect:  # not followed: the rows and credentials would go where nobody configured
        fix = "set url to the portal it names if that is yours"
        raise TerminalError(
            httpclient.redirected(response.status_code, response.headers.get("Location"), shown, fix)
        )
    try:
        return response.json()
    except ValueError:
        raise TerminalError(f"{shown} answered with something that is not JSON") from None
