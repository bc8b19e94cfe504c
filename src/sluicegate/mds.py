"""An extract callable for blocks tasks: the trips of one block from a provider's MDS ``/trips`` API.

Use it in a task's ``[extract]`` as ``callable = "sluicegate.mds:trips"``. Settings come
from the callable's config (``[config]``, ``[extract.config]`` and the key value's
``[keys.<provider>]``; values may be Fernet tokens):

``url``
    the provider's API root; trips are read from ``<url>/trips`` (required);
``token``
    a bearer token, sent as ``Authorization: Bearer <token>`` (optional);
``timeout``
    seconds the provider may be silent (default 30); a page's whole answer must arrive within
    4 times that, or the request fails as a network error (transient);
``retries``
    how many times a page answering 503 or 429 is asked again, waiting its ``Retry-After``
    (seconds or an HTTP date; capped at ``max_wait`` seconds, default 60) or 1, 2, 4 ... seconds (default 5);
``units``
    ``ms`` (MDS 0.4, the default) or ``s`` for the times in the query;
``max_answer_bytes``
    the most a page may hold once decoded (gunzipped), from 1024 (default 268435456, 256 MiB):
    a larger one, or one whose Content-Length says so, is terminal, read no further.

The block's UTC window ``[start, end)`` is asked for with ``start_time`` and ``end_time``,
and pages are followed through ``links.next`` to the end (a relative one is the page's; a
``links.next`` that is not an http(s) URL, or leads back to a page already served, is
terminal: the paging loops; so are ``IDLE_PAGES`` pages in a row that serve no trip not
served before, under new links). A trip served again on a later page (its ``trip_id``, text
or a number, seen before: offset paging while trips arrive) is yielded once when it is the
same; served again changed (the provider corrected it between the pages), it is yielded
again, and the load keeps the last copy of a ``trip_id``. A 5xx answer (after the page's
retries), network errors (a body cut short, gzipped or not, too), a 200 that is not JSON (a
proxy's or maintenance page, a body cut where its length was) and a 404 or 410 of a page
``links.next`` named (a cursor that expired: the block is read again from its first page)
are transient: the stage is retried with backoff. Another 4xx answer is terminal (a wrong
token, URL or parameter): the stage is parked with the provider's ``error_description``. A
redirect is not followed (the token would go to an address nobody configured): it is
terminal, naming where it leads; so is, with a token, a ``links.next`` on another server
(scheme, host and port) than ``url``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import json
import math
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from . import httpclient
from .exceptions import ConfigError, SourceUnavailable, TerminalError
from .masking import mask_url
from .secrets import reveal
from .timeblocks import StageBlock

MDS_ACCEPT = "application/vnd.mds.provider+json;version=0.4"
# Pages in a row with no new trip, each linking to another, before the paging is taken to loop:
# more than a provider that pages a day by the hour serves empty on a quiet night.
IDLE_PAGES = 100
TOO_LARGE = (
    "ask the provider for smaller pages (a page size parameter, if its API has one)"
    " or raise max_answer_bytes in the stage's config"
)


def trips(block: StageBlock, config: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield the trips of ``block`` from the provider's MDS API, page by page."""
    if "url" not in config:
        raise ConfigError(f"sluicegate.mds:trips for {block.key_value or block.task}: set url, the API root")
    url = f"{reveal(config['url']).rstrip('/')}/trips"
    units = config.get("units", "ms")
    if units not in ("ms", "s"):  # read as ms, a wrong unit asked for 1970: every block "no data"
        raise ConfigError(
            f"sluicegate.mds:trips for {block.key_value or block.task}: units {units!r} is not a unit"
            ' of the API\'s times; use "ms" (MDS 0.4) or "s"'
        )
    scale = 1 if units == "s" else 1000
    for name, default, whole in (("timeout", 30, False), ("retries", 5, True), ("max_wait", 60, False)):
        _setting(config, name, default, whole=whole, who=block.key_value or block.task)
    httpclient.answer_cap(config, f"sluicegate.mds:trips for {block.key_value or block.task}")
    params: dict[str, Any] | None = {
        "start_time": int(block.start.timestamp() * scale),
        "end_time": int(block.end.timestamp() * scale),
    }
    headers = {"Accept": MDS_ACCEPT}
    if config.get("token"):
        headers["Authorization"] = f"Bearer {reveal(config['token'])}"
    with httpclient.client(timeout=float(config.get("timeout", 30)), headers=headers) as client:
        next_url: str | None = url
        seen: set[str] = set()  # pages after the first: a links.next seen before is a loop
        served: dict[str, bytes] = {}  # trip id: a digest of the copy yielded last
        idle = 0  # pages in a row that served no new trip
        while next_url:
            body = get_page(client, next_url, params, config)
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, dict) or not isinstance(data.get("trips"), list):
                raise TerminalError(
                    f"{mask_url(next_url)} answered without data.trips; is it an MDS /trips API?"
                )
            new, fresh = _unserved(data["trips"], served)
            yield from new
            page, next_url, params = next_url, _next_page(body, next_url, seen), None
            if next_url and "Authorization" in headers and _origin(next_url) != _origin(url):
                raise TerminalError(  # as a redirect is not followed: the token would go there
                    f"{mask_url(page)} answered with links.next {mask_url(next_url)}, on another server"
                    f" than url ({_origin(url)}): the token is not sent there; ask the provider to fix it"
                )
            idle = 0 if fresh else idle + 1
            if next_url and idle >= IDLE_PAGES:
                raise TerminalError(
                    f"{mask_url(page)} and the {IDLE_PAGES - 1} pages before it served no new trip, each"
                    " linking to another: the provider's paging loops or never ends; ask the provider"
                    " to fix it"
                )


def _origin(address: str) -> str:
    """``scheme://host:port`` of a URL, lower-cased."""
    parts = urllib.parse.urlsplit(address)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"


def _unserved(trips: list[Any], served: dict[str, bytes]) -> tuple[list[Any], bool]:
    """The trips of a page not yielded before as they are (by ``trip_id``, text or a number; one
    without is new), and whether one of them had a new ``trip_id``. A trip served again changed
    is yielded again: the provider corrected it between the pages, and the first copy alone was
    loaded, stale. Ids that are numbers were all new: their trips yielded twice, and a provider
    that served its first page for ever, under new links, was paged for ever."""
    new, fresh = [], False
    for trip in trips:
        ident = trip.get("trip_id") if isinstance(trip, dict) else None
        if ident is None or isinstance(ident, dict | list):
            new.append(trip)
            fresh = True
            continue
        if not isinstance(ident, str):  # a number: the provider's ids are not text, but still ids
            ident = json.dumps(ident)
        copy = hashlib.blake2b(json.dumps(trip, sort_keys=True, default=str).encode(), digest_size=16)
        before = served.get(ident)
        if before == copy.digest():
            continue
        fresh, served[ident] = fresh or before is None, copy.digest()
        new.append(trip)
    return new, fresh


def _setting(config: Mapping[str, Any], name: str, default: float, *, whole: bool, who: str) -> float:
    """A number setting: ConfigError naming it when it is not one (``retries = -1`` ended in
    "AssertionError: unreachable", ``timeout = "30s"`` in a bare ValueError)."""
    value = config.get(name, default)
    try:
        number = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if math.isnan(number) or (math.isinf(number) and name != "max_wait"):  # TOML's nan, inf
        number = -1.0  # max_wait = inf: no cap on a Retry-After
    if number < 0 or (name == "timeout" and number == 0) or (whole and number != int(number)):
        kind = "a whole number of at least 0" if whole else "a number of seconds above 0"
        raise ConfigError(f"sluicegate.mds:trips for {who}: {name} {value!r} is not {kind}")
    return number


def _next_page(body: dict[str, Any], page: str, seen: set[str]) -> str | None:
    """The page ``links.next`` names (relative to ``page``), or None at the end; a loop or a link
    that is not an http(s) URL is terminal. A provider whose links.next led back to a page it had
    served made the stage read the same trips for ever, its lease renewed, so no run could take
    the block again."""
    links = body.get("links") or {}
    following = links.get("next") if isinstance(links, dict) else links
    if following is None or following == "":
        return None
    if not isinstance(following, str):
        raise TerminalError(f"{mask_url(page)} answered with links.next {following!r}, which is not a URL")
    # a relative link is the page's (it was asked for as it stood, and failed as a network error,
    # retried until parked); one to another scheme (ftp:, javascript:) cannot be paged over HTTP
    following = urllib.parse.urljoin(page, following.strip())
    if urllib.parse.urlsplit(following).scheme.lower() not in ("http", "https"):
        raise TerminalError(
            f"{mask_url(page)} answered with links.next {mask_url(following)}, which is not an http(s)"
            " URL; ask the provider to fix it"
        )
    if following in seen:
        raise TerminalError(
            f"{mask_url(page)} answered with links.next {mask_url(following)}, a page it had served "
            "already: the provider's paging loops; ask the provider to fix it"
        )
    seen.add(following)
    return following


def get_page(
    client: httpx.Client, url: str, params: Mapping[str, Any] | None, config: Mapping[str, Any]
) -> Any:
    """One page as JSON, asked again while it answers 503 or 429 (see the module)."""
    retries, max_wait = int(config.get("retries", 5)), float(config.get("max_wait", 60))
    shown = mask_url(url)
    cap = httpclient.answer_cap(config, shown)  # checked by trips already
    for attempt in range(retries + 1):
        try:
            response = httpclient.send(client, "GET", url, params=params, cap=cap)
        except httpx.HTTPError as exc:
            raise SourceUnavailable(f"{shown}: {type(exc).__name__}: {exc}; will retry") from None
        except httpclient.TooLarge as exc:  # asked again, it is as large: the worker would die of it
            if retry := exc.transient(shown):  # a 503's page: another try may get the trips
                raise SourceUnavailable(retry) from None
            raise TerminalError(exc.sentence(shown, TOO_LARGE)) from None
        if response.status_code in (429, 503) and attempt < retries:
            time.sleep(min(_retry_after(response, attempt), max_wait))
            continue
        if response.status_code >= 500 or response.status_code == 429:
            raise SourceUnavailable(f"{shown}: HTTP {response.status_code}{_reason(response)}; will retry")
        if response.status_code in (404, 410) and params is None:  # a links.next: url is not at fault
            raise SourceUnavailable(
                f"{shown}: HTTP {response.status_code}{_reason(response)}, though the page before linked"
                " to it (its cursor expired?): the block is read again from its first page; if it goes"
                " on, ask the provider to fix its paging; will retry"
            )
        if response.status_code >= 400:
            advice = httpclient.refused(response.status_code, "token", "url, the API root")
            raise TerminalError(f"{shown}: HTTP {response.status_code}{_reason(response)}{advice}")
        if response.is_redirect:  # not followed: the token would go to an address nobody configured
            fix = "set url to the API root it names if that is the provider's"
            location = response.headers.get("Location")
            raise TerminalError(httpclient.redirected(response.status_code, location, shown, fix))
        try:
            return response.json(parse_float=_finite, parse_constant=_finite)
        except _NotFinite as exc:  # the provider's data: asking again gives the same
            raise TerminalError(
                f"{shown} answered with the number {exc}, which JSON cannot hold (nor the block's"
                " artifact); ask the provider to fix it, then rerun with --incomplete-only"
            ) from None
        except ValueError as exc:  # a proxy's or a maintenance page, a body cut where its length was
            raise SourceUnavailable(f"{shown} answered {_not_json(response, exc)}; will retry") from None
    raise AssertionError("unreachable")


class _NotFinite(ValueError):
    """A number a page holds that is no finite float: ``1e999``, or (not JSON) NaN or Infinity."""


def _finite(text: str) -> float:
    """A page's number, refused when it is not finite: one trip's ``1e999`` (read as inf) failed the
    whole block where its artifact was written, "Out of range float values are not JSON
    compliant", naming neither the provider's page nor the number."""
    number = float(text)
    if not math.isfinite(number):
        raise _NotFinite(text[:40])
    return number


def _not_json(response: httpx.Response, exc: ValueError) -> str:
    """What a 200 that is not JSON was, for the ledger: parked at once, "answered with something
    that is not JSON" said neither what came (an HTML page?) nor what to do, and a page a proxy
    cut, or a provider's maintenance page, was parked where asking again works."""
    kind = response.headers.get("Content-Type", "no Content-Type").split(";")[0].strip()
    start = response.content[:80].decode("utf-8", "replace")
    return (
        f"HTTP {response.status_code} with {kind} that is not JSON ({str(exc)[:120]}), starting {start!r}:"
        " a page cut short, or not the API's (a proxy's or a maintenance page); if it goes on, check"
        " url, the API root"
    )


def _retry_after(response: httpx.Response, attempt: int) -> float:
    """Seconds to wait: ``Retry-After`` in seconds or as an HTTP date (one was taken for none, and
    the retries ran out inside the provider's window), else 1, 2, 4 ..."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isascii() and value.isdigit():  # "²" is a digit to isdigit, and no number to float
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return float(2**attempt)
    if when.tzinfo is None:  # "-0000": UTC, as HTTP dates are
        when = when.replace(tzinfo=dt.UTC)
    return max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        text = body.get("error_description") or body.get("message") or body.get("error")
        return f" ({str(text)[:200]})" if text else ""
    return ""
