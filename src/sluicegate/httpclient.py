"""HTTP clients for the stage callables (``mds``, ``socrata``): one TLS context for the process.

Building an ``httpx.Client`` loads the system's CA bundle each time (tens of milliseconds);
a blocks run makes a client per block, so the context is built once and shared.
"""

from __future__ import annotations

import contextlib
import ipaddress
import ssl
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any

import httpcore
import httpx
import socksio

from . import validate
from .exceptions import ConfigError
from .masking import mask_url


@lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """The default TLS context (certificates verified), built once."""
    return ssl.create_default_context()


def client(*, timeout: float, headers: dict[str, str] | None = None, auth: Any = None) -> httpx.Client:
    """A client with the shared TLS context, asking only for the codings ``send`` counts as decoded
    (httpx asks for br and zstd too when their packages are installed)."""
    headers = {"Accept-Encoding": "gzip, deflate", **(headers or {})}
    return httpx.Client(timeout=timeout, headers=headers, auth=auth, transport=_Transport())  # TLS: _pool


# A request's whole answer must arrive within this many times the client's timeout, which is per
# read: a server sending a few bytes a second, never idle for a whole timeout, held a unit for ever.
WHOLE_ANSWER = 4
# The default of a stage's max_answer_bytes: an answer is held whole in memory, then parsed (about
# 5 times its size again as Python objects), so one of 3 GB, or a gzip bomb (1 KiB that inflates to
# 1 MiB), had the kernel kill the worker, again on every worker that took the block over. 256 MiB
# holds an unpaged day of a large provider's trips (100,000 of ~2.5 KB); see docs/blocks.md.
MAX_ANSWER = 256 * 2**20
_PIECE = 1 << 16  # bytes a decoder gives at a time while an answer is counted


def answer_cap(config: Mapping[str, Any], where: str) -> int:
    """A stage's ``max_answer_bytes`` (default :data:`MAX_ANSWER`), a whole number from 1024."""
    value = config.get("max_answer_bytes", MAX_ANSWER)
    return validate.whole_number(value, f"{where}: max_answer_bytes", minimum=1024)


class TooLarge(Exception):
    """An answer whose decoded body is larger than ``cap`` bytes (``declared``: its Content-Length;
    ``status``: its HTTP status, set by :func:`send`)."""

    def __init__(self, cap: int, declared: int | None = None) -> None:
        super().__init__(f"the answer is larger than {cap} bytes")
        self.cap, self.declared = cap, declared
        self.status: int | None = None

    def transient(self, shown: str) -> str | None:
        """For a 5xx, 408 or 429 (a proxy's or load balancer's page, which the next try may not
        send), the unit's transient error: asking again is what such an answer calls for."""
        if self.status is None or not (self.status >= 500 or self.status in (408, 429)):
            return None
        return f"{shown}: HTTP {self.status}, its answer larger than max_answer_bytes (not read); will retry"

    def sentence(self, shown: str, fix: str) -> str:
        """One sentence for the unit's error: the masked URL ``shown``, the cap, and ``fix``."""
        size = f"{self.cap} bytes" + (f", {self.cap / 2**20:.4g} MiB" if self.cap >= 2**20 else "")
        said = f" (its Content-Length says {self.declared})" if self.declared is not None else ""
        return (
            f"{shown} answered more than max_answer_bytes ({size}) decoded{said}, more than the worker"
            f" is to hold in memory: {fix}, then rerun with --incomplete-only"
        )


def send(
    client: httpx.Client, method: str, url: str, *, cap: int = MAX_ANSWER, **kwargs: Any
) -> httpx.Response:
    """``client.request(method, url, **kwargs)`` (``client`` made by :func:`client`), its status,
    headers and body read whole within ``WHOLE_ANSWER`` times the client's read timeout of the
    request's start (else ``httpx.ReadTimeout``), and at most ``cap`` bytes once decoded (else
    :class:`TooLarge`, before more than about ``cap`` bytes are held)."""
    limit = WHOLE_ANSWER * (client.timeout.read or 60.0)
    message = f"the answer did not arrive whole within {limit:g} s ({WHOLE_ANSWER} times the timeout)"
    _TIME.until = until = time.monotonic() + limit
    try:
        with client.stream(method, url, **kwargs) as response:
            try:
                _read(response, cap)
            except TooLarge as exc:
                exc.status = response.status_code
                raise
    except httpx.TimeoutException as exc:
        if time.monotonic() < until:
            raise
        raise httpx.ReadTimeout(message, request=exc.request) from exc
    finally:
        _TIME.until = None
    return response


def _read(response: httpx.Response, cap: int) -> None:
    """Read ``response``'s body, decoded, or raise :class:`TooLarge` once it is over ``cap`` bytes."""
    codings = [c.strip().lower() for c in response.headers.get("Content-Encoding", "").split(",")]
    codings = [c for c in codings if c not in ("", "identity")]
    declared = response.headers.get("Content-Length", "").strip()
    if not codings and declared.isdigit() and int(declared) > cap:  # refused before it is read
        raise TooLarge(cap, int(declared))
    response.stream = _Counted(response.stream, response.request, codings=codings, cap=cap)
    response.read()


class _Time(threading.local):
    until: float | None = None  # the monotonic time by which send()'s answer must be in


_TIME = _Time()


def _left(timeout: float | None) -> float | None:
    """``timeout`` (a read's, a write's, a connect's) cut to what is left of send()'s time."""
    if _TIME.until is None:
        return timeout
    left = _TIME.until - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("out of time")  # send() says which time
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    """A connection whose every wait is cut to what is left of send()'s time: httpx counts its
    timeout per read, so a server sending its status line and headers (or its body) a byte at a
    time, never idle for a whole timeout, held a unit for as long as it kept sending. A wait
    httpcore gives no timeout (a SOCKS5 proxy's handshake) has the connect timeout (``given``), as
    an HTTP proxy's CONNECT has the client's timeouts."""

    def __init__(self, inner: httpcore.NetworkStream, given: float | None) -> None:
        self.inner, self.given = inner, given

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _left(self.given if timeout is None else timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _left(self.given if timeout is None else timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self.inner.start_tls(ssl_context, server_hostname, _left(timeout)), self.given)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """httpcore's own backend, its connections made :class:`_Stream`."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self.inner.connect_tcp(host, port, _left(timeout), local_address, socket_options)
        return _Stream(stream, timeout)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        return _Stream(self.inner.connect_unix_socket(path, _left(timeout), socket_options), timeout)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _Transport(httpx.BaseTransport):
    """httpx's transport over httpcore (which httpx's own gives no network backend), its
    connections made by :class:`_Backend`, through the proxy the environment names for the
    request's address (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, none for ``NO_PROXY``):
    httpx reads those only for a client without a transport of its own."""

    def __init__(self) -> None:
        self.proxies = urllib.request.getproxies()
        self.pools: dict[str, httpcore.ConnectionPool] = {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        named = request.url.scheme if request.url.scheme in self.proxies else "all"
        proxy = self.proxies.get(named, "")
        if proxy and _bypassed(request.url):
            proxy = ""
        pool = self.pools.get(proxy) or self.pools.setdefault(proxy, _pool(proxy, f"{named.upper()}_PROXY"))
        url = request.url
        asked = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx():
            answer = pool.handle_request(asked)
        return httpx.Response(
            answer.status, headers=answer.headers, stream=_Body(answer), extensions=answer.extensions
        )

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


def _bypassed(url: httpx.URL) -> bool:
    """Whether ``NO_PROXY`` keeps ``url`` off the proxy, as httpx read it: an entry naming its host
    (``.example.com``, ``example.com``: subdomains too), its ``host:port``, or ``*`` anywhere in
    the list (urllib's own check takes ``*`` only as the whole value, and never sees the port);
    and, as curl and Go read it, an address range (``10.0.0.0/8``) holding an address the URL
    names (a host name is not resolved for it), or, as Go reads it, an IPv6 address in brackets
    (``[fd00::5]``, ``[fd00::5]:8443``)."""
    entries = [entry.strip() for entry in urllib.request.getproxies().get("no", "").split(",")]
    where = url.host if url.port is None else f"{url.host}:{url.port}"
    return "*" in entries or bool(urllib.request.proxy_bypass(where)) or _holds_address(url, entries)


def _holds_address(url: httpx.URL, entries: list[str]) -> bool:
    """Whether ``url`` names an IP address that one of the ``entries`` holds: an address range, or
    the address in brackets, alone or with the URL's port (urllib compares such an entry with the
    host unbracketed, so an IPv6 host's ``[address]:port`` went to the proxy)."""
    try:
        address = ipaddress.ip_address(url.host.strip("[]"))
    except ValueError:
        return False
    for entry in entries:
        inside, closed, port = entry[1:].partition("]") if entry.startswith("[") else ("", "", "")
        with contextlib.suppress(ValueError):
            if "/" in entry and address in ipaddress.ip_network(entry, strict=False):
                return True
            if closed and port in ("", f":{url.port}") and address == ipaddress.ip_address(inside):
                return True
    return False


_LIMITS: dict[str, Any] = {"max_connections": 100, "max_keepalive_connections": 20, "keepalive_expiry": 5.0}


# The proxies a :class:`_Transport` speaks: through an HTTP(S) proxy by CONNECT or as its
# forward proxy, through a SOCKS5 one by its CONNECT (socks5h: the proxy resolves the name, as
# httpcore always has it do).
_SOCKS = ("socks5", "socks5h")


def _pool(proxy: str, variable: str) -> httpcore.ConnectionPool:
    """The connections of a :class:`_Transport` straight to the servers ("") or through ``proxy``
    (named by the environment's ``variable``), each made by :class:`_Backend`, so that every wait
    through a proxy is cut to send()'s time too."""
    if not proxy:
        return httpcore.ConnectionPool(ssl_context=tls_context(), network_backend=_Backend(), **_LIMITS)
    scheme = proxy.partition("://")[0].lower() if "://" in proxy else "http"
    if scheme not in ("http", "https", *_SOCKS):
        raise _unusable(variable, proxy, f"whose scheme {scheme} sluicegate cannot speak")
    try:
        named = httpx.Proxy(proxy if "://" in proxy else f"http://{proxy}")  # its user and password as auth
    except httpx.InvalidURL as exc:  # a mistyped port, an unclosed [: httpx's error named neither
        raise _unusable(variable, proxy, f"which is no URL ({exc})") from None
    url = named.url
    if not url.host:  # else a ConnectError ("Name or service not known"), retried for ever
        raise _unusable(variable, proxy, "which names no host")
    where = httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path)
    if scheme in _SOCKS:
        return httpcore.SOCKSProxy(
            proxy_url=where,
            proxy_auth=named.raw_auth,
            ssl_context=tls_context(),
            network_backend=_Backend(),
            **_LIMITS,
        )
    return httpcore.HTTPProxy(
        proxy_url=where,
        proxy_auth=named.raw_auth,
        proxy_headers=named.headers.raw,
        ssl_context=tls_context(),
        proxy_ssl_context=tls_context() if url.scheme == "https" else None,
        network_backend=_Backend(),
        **_LIMITS,
    )


def _unusable(variable: str, proxy: str, why: str) -> ConfigError:
    """The error of a proxy named by ``variable`` that sluicegate cannot use, its password masked."""
    # host:port alone is read as http://host:port, and masked so (mask_url leaves it as it is)
    shown = mask_url(proxy) if "://" in proxy else mask_url(f"http://{proxy}").removeprefix("http://")
    return ConfigError(
        f"{variable} names the proxy {shown}, {why}: name an http://, https:// or socks5:// proxy there,"
        f" or list the host in NO_PROXY, then redrive the task"
    )


class _Body(httpx.SyncByteStream):
    """An httpcore answer's body, its errors httpx's."""

    def __init__(self, answer: httpcore.Response) -> None:
        self.answer = answer

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx():
            yield from self.answer.iter_stream()

    def close(self) -> None:
        with _as_httpx():
            self.answer.close()


# httpcore's errors and httpx's for them, the narrower first (as httpx maps them in its transport)
_ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    # A SOCKS5 proxy's handshake cut short (it hung up, or wanted credentials not given): httpcore
    # lets socksio's error through, which mds and socrata took for an unknown one and parked.
    (socksio.SOCKSError, httpx.ProxyError),
)


@contextlib.contextmanager
def _as_httpx() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for theirs, ours in _ERRORS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc
        raise


class _Inflate:
    """A zlib decoder of one content coding as httpx decodes it (``deflate``: zlib, else raw)."""

    def __init__(self, coding: str) -> None:
        self.wbits = zlib.MAX_WBITS if coding == "deflate" else 16 + zlib.MAX_WBITS
        self.zlib, self.fresh = zlib.decompressobj(self.wbits), True

    def decompress(self, data: bytes, most: int) -> bytes:
        try:
            out = self.zlib.decompress(data, most)
        except zlib.error:
            if not (self.fresh and self.wbits == zlib.MAX_WBITS):
                raise
            self.zlib = zlib.decompressobj(-zlib.MAX_WBITS)  # a raw deflate stream, as httpx retries
            out = self.zlib.decompress(data, most)
        self.fresh = False
        return out


class _Counted(httpx.SyncByteStream):
    """A response body that fails once it decodes to more than ``cap`` bytes, counted before httpx
    decodes a chunk (whole: a 64 KiB chunk of a gzip bomb is 64 MiB), in pieces of 64 KiB; and,
    gzipped, when it ends before the gzip stream does (httpx decodes a cut gzip body to part of the
    answer, without error: a page cut short by a proxy was "not JSON", parked, where asking again
    works)."""

    def __init__(self, inner: Any, request: httpx.Request, *, codings: list[str], cap: int) -> None:
        self.inner, self.request = inner, request
        # httpx decodes the codings it knows, the last applied first; another (br) it leaves as is
        known = [c for c in codings if c in ("gzip", "x-gzip", "deflate")]
        self.decoders = [_Inflate(c) for c in reversed(known)]
        self.cap, self.decoded, self.broken = cap, 0, False
        self.started = False  # an empty body (a redirect's, a 429's) under gzip is no gzip stream

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.started = self.started or bool(chunk)
            if self.broken:
                self._count(chunk)
            else:
                try:
                    self._decode(0, chunk)
                except zlib.error:  # a corrupt body: httpx's decoder says so
                    self.broken = True
            yield chunk
        if self.decoders and not self.decoders[0].zlib.eof and self.started and not self.broken:
            raise httpx.DecodingError("the gzip-encoded answer ends before its end", request=self.request)

    def _decode(self, stage: int, data: bytes) -> None:
        """Count what ``data`` decodes to through the decoders from ``stage`` on (output dropped)."""
        if stage == len(self.decoders):
            self._count(data)
            return
        decoder = self.decoders[stage]
        while not decoder.zlib.eof:
            out = decoder.decompress(data, _PIECE)
            data = decoder.zlib.unconsumed_tail
            self._decode(stage + 1, out)
            if not data and len(out) < _PIECE:  # a full piece may leave output in zlib, input none
                break

    def _count(self, data: bytes) -> None:
        self.decoded += len(data)
        if self.decoded > self.cap:
            raise TooLarge(self.cap)

    def close(self) -> None:
        self.inner.close()


def refused(status: int, credentials: str, address: str) -> str:
    """What to do about a 4xx answer: ``credentials`` and ``address`` name the settings to check.

    A token that expired mid-run parked the stage with "HTTP 401 (...)" and no word of the fix."""
    if status in (401, 403):
        return f"; the server refused the credentials: check {credentials}, then rerun with --incomplete-only"
    if status in (404, 410):
        return f"; nothing is there: check {address}, then rerun with --incomplete-only"
    return "; fix what the server names, then rerun with --incomplete-only"


def redirected(status: int, location: str | None, shown: str, fix: str) -> str:
    """Why a redirect is not followed (the credentials would go to an address nobody configured)."""
    return f"{shown} answered HTTP {status}, a redirect to {mask_url(location or '?')}; {fix}"
