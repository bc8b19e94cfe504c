"""A fault-injecting HTTP/1.1 proxy for tests, and the ``fault_proxy`` pytest fixture.

:class:`FaultProxy` listens on 127.0.0.1 (a free port) and forwards every request to one
upstream ``host:port``, such as the SeaweedFS S3 endpoint, so that boto3 (or sluicegate)
talks to the upstream through it. What it does to requests can be changed while it runs,
from any thread:

* :meth:`~FaultProxy.latency` delays every request before it is handled;
* :meth:`~FaultProxy.delay` holds matching requests for a while before forwarding them (a
  network call that hangs, then goes through);
* :meth:`~FaultProxy.fail` answers matching requests (or only conditional ones) itself with an
  S3-style XML error;
* :meth:`~FaultProxy.reset` cuts both connections (RST, ``SO_LINGER`` 0) after K request body
  bytes reached the upstream, or after the upstream answered but before the answer is relayed;
* :meth:`~FaultProxy.corrupt_body` flips one byte of the request body on its way upstream;
* :meth:`~FaultProxy.strip_conditional_headers` drops ``If-Match`` / ``If-None-Match``;
* :meth:`~FaultProxy.before` runs a callback before matching requests are forwarded (to
  change the upstream's state at an exact moment, e.g. tamper with an object between its
  upload and the client's ``HEAD``);
* :meth:`~FaultProxy.down` / :meth:`~FaultProxy.up` reset every new connection, and every
  request on an open one, until ``up()``;
* :attr:`~FaultProxy.log` lists every request seen (:class:`Exchange`), and
  :attr:`~FaultProxy.faulted` the ones a fault applied to (kept whatever ``log_limit``).

``fail``, ``reset``, ``corrupt_body``, ``delay`` and ``before`` add a counted :class:`Rule`. Rules are tried in the
order they were added and the first one that matches a request applies to it (and uses up one
of its ``times``); ``times=None`` applies until :meth:`~FaultProxy.clear`.

HTTP handling: keep-alive on the client side (each request gets a fresh upstream connection,
closed after its response, so a stale upstream connection never eats a request); request
bodies framed by ``Content-Length`` or ``Transfer-Encoding: chunked`` (relayed chunked,
trailers kept); ``Expect: 100-continue`` is answered by the proxy (``100 Continue`` when the
body is wanted, the final answer otherwise) and the ``Expect`` header is not forwarded.
Responses are relayed byte for byte. ``Host`` is forwarded unchanged, so SigV4 signatures made
for the proxy's address stay valid. Bodies are streamed, never held whole in memory.

Standard library only: ``bench/soak.py`` uses this module outside pytest.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import hmac
import http
import io
import itertools
import re
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

PIECE = 64 * 1024  # bytes relayed per read
MAX_HEAD = 64 * 1024  # bytes in a request or response head
CLIENT_IDLE_S = 300.0  # an idle client connection is closed after this
UPSTREAM_TIMEOUT_S = 120.0
LOG_SETTLE_S = 2.0
CONDITIONAL_HEADERS = frozenset({"if-match", "if-none-match"})
MESSAGES = {  # S3's own wording, for fail() without a message
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "ServiceUnavailable": "Service is unable to handle request.",
    "RequestTimeout": "Your socket connection to the server was not read from or written to within the timeout period.",
    "PreconditionFailed": "At least one of the pre-conditions you specified did not hold",
}


class _Cut(Exception):
    """The peer went away (EOF or socket error) in the middle of a message."""


# --------------------------------------------------------------------------- public value types


@dataclasses.dataclass
class Rule:
    """One counted fault. ``hits`` counts the requests it applied to; ``times`` what is left."""

    kind: str  # "fail", "reset", "corrupt", "delay" or "before"
    method: str | None = None
    path_regex: str | None = None
    times: int | None = 1  # None = until cleared
    status: int = 503
    code: str = "SlowDown"
    message: str = ""
    after_bytes: int | None = None
    seconds: float = 0.0
    action: Callable[[Exchange], None] | None = None  # "before": called before forwarding
    conditional: bool = False  # only requests with If-Match or If-None-Match
    hits: int = 0

    def matches(self, method: str, target: str, has_body: bool, conditional: bool = False) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.conditional and not conditional:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self.path_regex is not None and not re.search(self.path_regex, target):
            return False
        return has_body or self.kind != "corrupt"  # nothing to corrupt in an empty body


@dataclasses.dataclass
class Exchange:
    """One request the proxy saw, and what became of it."""

    method: str
    path: str  # the request target as the client sent it (path and query)
    headers: list[tuple[str, str]]  # as received from the client
    forwarded: bool = False  # True once the request head was sent upstream
    forwarded_headers: list[tuple[str, str]] | None = None  # as sent upstream
    status: int | None = None  # the status answered to the client; None if the connection was cut
    fault: str | None = None  # "fail", "reset", "corrupt", "delay", "before", "down" or None
    body_bytes: int = 0  # request body bytes received from the client
    seconds: float = 0.0  # from the end of the request head to the end of the answer
    at: float = dataclasses.field(default_factory=time.time)  # arrival (Unix time)

    def header(self, name: str, *, forwarded: bool = False) -> str | None:
        """The value of header ``name`` (case-insensitive), as received or as forwarded."""
        headers = (self.forwarded_headers or []) if forwarded else self.headers
        return _get(headers, name)

    @property
    def agent(self) -> str:
        """The client's product, from its User-Agent: "Boto3", "CRTS3NativeClient", ..."""
        return (self.header("User-Agent") or "").split("/")[0]


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers if key.lower() == wanted), None)


# --------------------------------------------------------------------------- wire helpers


@dataclasses.dataclass
class _Head:
    """A parsed request or response head (``first`` is the request or status line)."""

    first: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        return _get(self.headers, name)

    def tokens(self, name: str) -> set[str]:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}

    def encode(self, headers: list[tuple[str, str]] | None = None) -> bytes:
        lines = [self.first, *(f"{k}: {v}" for k, v in (self.headers if headers is None else headers))]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _read_head(reader: io.BufferedReader) -> _Head | None:
    """Read one message head; None on a clean EOF before its first byte."""
    lines: list[str] = []
    size = 0
    while True:
        line = reader.readline(MAX_HEAD + 1)
        if not line:
            if lines:
                raise _Cut("connection closed inside a message head")
            return None
        size += len(line)
        if size > MAX_HEAD:
            raise _Cut("message head too large")
        text = line.decode("latin-1").rstrip("\r\n")
        if not text:
            if lines:
                break
            continue  # tolerate stray empty lines between messages (RFC 9112 section 2.2)
        lines.append(text)
    headers = []
    for text in lines[1:]:
        name, sep, value = text.partition(":")
        if not sep:
            raise _Cut(f"malformed header line {text!r}")
        headers.append((name.strip(), value.strip()))
    return _Head(lines[0], headers)


def _read_exact(reader: io.BufferedReader, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise _Cut("connection closed inside a message body")
    return data


def _body_pieces(reader: io.BufferedReader, head: _Head) -> Iterator[bytes]:
    """The decoded body of a request, in pieces of at most PIECE bytes."""
    if "chunked" in head.tokens("transfer-encoding"):
        while True:
            size_line = reader.readline(1024)
            if not size_line.endswith(b"\n"):
                raise _Cut("bad chunk size line")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                return
            while size:
                piece = _read_exact(reader, min(size, PIECE))
                size -= len(piece)
                yield piece
            _read_exact(reader, 2)  # the CRLF after the chunk data
    remaining = int(head.get("content-length") or 0)
    while remaining:
        piece = _read_exact(reader, min(remaining, PIECE))
        remaining -= len(piece)
        yield piece


def _read_trailers(reader: io.BufferedReader) -> bytes:
    """The raw trailer section after a last chunk, including its final CRLF."""
    raw = b""
    while True:
        line = reader.readline(MAX_HEAD)
        if not line:
            raise _Cut("connection closed inside trailers")
        raw += line
        if line in (b"\r\n", b"\n"):
            return raw


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Conn:
    """A socket and its buffered reader (the reader must be closed for close() to close the fd)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.linger = False  # close with linger_close(), not close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
        with contextlib.suppress(OSError):
            self.sock.close()

    def reset(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.close()
        _reset(self.sock)

    def linger_close(self, seconds: float = 1.0) -> None:
        """Close after the peer has read our answer: FIN first, then drain what it still sends."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(seconds)
            while self.sock.recv(PIECE):
                pass
        self.close()


# --------------------------------------------------------------------------- the proxy


class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``)."""

    def __init__(
        self, upstream: str, *, host: str = "127.0.0.1", port: int = 0, log_limit: int | None = None
    ) -> None:
        """``log_limit`` keeps only the last N exchanges in :attr:`log` (for long runs)."""
        parts = urlsplit(upstream if "://" in upstream else f"http://{upstream}")
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream {upstream!r} must be http://host:port")
        self.upstream = (parts.hostname, parts.port)
        self._listener = socket.create_server((host, port))
        self.host, self.port = self._listener.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # notified when an exchange ends
        self._in_flight = 0
        self._rules: list[Rule] = []
        self._latency = 0.0
        self._strip = False
        self._resign_secret: str | None = None
        self._down = False
        self._log: collections.deque[Exchange] = collections.deque(maxlen=log_limit)
        self._faulted: list[Exchange] = []
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self.connections = 0  # client connections accepted and served
        self.refused = 0  # client connections reset at accept while down()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        """Start accepting connections (in a daemon thread); returns self."""
        thread = threading.Thread(target=self._accept_loop, name=f"faultproxy-{self.port}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop accepting, cut every open connection and wait for the handler threads."""
        self._stopping.set()
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(timeout=10)
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ controls (thread-safe)

    def latency(self, seconds: float) -> None:
        """Delay every request by ``seconds`` before it is handled (0 to stop)."""
        with self._lock:
            self._latency = max(0.0, float(seconds))

    def fail(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        status: int = 503,
        times: int | None = 1,
        code: str = "SlowDown",
        message: str | None = None,
        *,
        conditional: bool = False,
    ) -> Rule:
        """Answer ``times`` matching requests with ``status`` and ``<Error><Code>code``, unforwarded
        (with ``conditional``, only requests that carry ``If-Match`` or ``If-None-Match``).

        A request body not yet received is never read: with ``Expect: 100-continue`` the
        error is the answer to the head, and the connection is closed after it.
        """
        text = message or MESSAGES.get(code, f"Injected {code}.")
        rule = Rule("fail", method, path_regex, times, status=status, code=code, message=text)
        rule.conditional = conditional
        return self._add(rule)

    def reset(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        after_bytes: int | None = None,
        times: int | None = 1,
    ) -> Rule:
        """Forward ``times`` matching requests, then cut both connections with RST.

        The cut comes once ``after_bytes`` bytes of the request body were sent upstream
        (0 = right after the head), or, when ``after_bytes`` is None or the body is shorter,
        after the upstream has answered but before the answer is relayed: the upstream did the
        work, the client never hears of it.
        """
        return self._add(Rule("reset", method, path_regex, times, after_bytes=after_bytes))

    def corrupt_body(
        self, method: str | None = "PUT", path_regex: str | None = None, times: int | None = 1
    ) -> Rule:
        """Flip (XOR 0xFF) the middle byte of the body of ``times`` matching requests with a body."""
        return self._add(Rule("corrupt", method, path_regex, times))

    def delay(
        self,
        method: str | None = None,
        path_regex: str | None = None,
        seconds: float = 1.0,
        times: int | None = 1,
    ) -> Rule:
        """Hold ``times`` matching requests for ``seconds``, then forward them unchanged.

        The client waits all along (with ``Expect: 100-continue`` it sends its body after its
        own wait, and the body waits in the socket buffers): a network call that hangs and
        then lands late, after the client may have been given up on elsewhere.
        """
        return self._add(Rule("delay", method, path_regex, times, seconds=seconds))

    def before(
        self,
        action: Callable[[Exchange], None],
        method: str | None = None,
        path_regex: str | None = None,
        times: int | None = 1,
    ) -> Rule:
        """Call ``action(exchange)`` (on the proxy's thread) before forwarding ``times`` matching requests.

        The client waits meanwhile; what ``action`` does to the upstream (with a client of its
        own, not through the proxy) happens before the request reaches it.
        """
        return self._add(Rule("before", method, path_regex, times, action=action))

    def strip_conditional_headers(self, enabled: bool = True, *, resign_secret: str | None = None) -> None:
        """Remove ``If-Match`` and ``If-None-Match`` from every forwarded request.

        SigV4 signs these headers, so a store that checks signatures (SeaweedFS) answers a
        stripped request with 403 ``SignatureDoesNotMatch``. With ``resign_secret`` (the secret
        key of the request's access key) the proxy signs the stripped request again, with the
        same date, scope and payload hash, so that the store sees a valid request without the
        condition: an endpoint that ignores conditional writes.
        """
        with self._lock:
            self._strip = enabled
            self._resign_secret = resign_secret if enabled else None

    def down(self) -> None:
        """Reset new connections at once, and requests on open connections, until up()."""
        with self._lock:
            self._down = True

    def up(self) -> None:
        """Undo down()."""
        with self._lock:
            self._down = False

    @property
    def is_down(self) -> bool:
        with self._lock:
            return self._down

    def clear(self) -> None:
        """Remove every rule, latency, header stripping and down(); the log stays."""
        with self._lock:
            self._rules.clear()
            self._latency = 0.0
            self._strip = False
            self._resign_secret = None
            self._down = False

    @property
    def log(self) -> list[Exchange]:
        """The requests seen so far, in order of arrival.

        Waits (up to LOG_SETTLE_S) for the exchanges in progress to end first: a client gets
        its answer a moment before the proxy has finished recording it.
        """
        with self._settled:
            self._settled.wait_for(lambda: self._in_flight == 0, timeout=LOG_SETTLE_S)
            return list(self._log)

    @property
    def faulted(self) -> list[Exchange]:
        """The requests a fault applied to (rules and down()), in order; never trimmed."""
        with self._settled:
            self._settled.wait_for(lambda: self._in_flight == 0, timeout=LOG_SETTLE_S)
            return list(self._faulted)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()
            self._faulted.clear()

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def _take_rule(self, method: str, target: str, has_body: bool, conditional: bool = False) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, target, has_body, conditional):
                    if rule.times is not None:
                        rule.times -= 1
                    rule.hits += 1
                    return rule
        return None

    # ------------------------------------------------------------ connections

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if not selector.select(timeout=0.1):
                    continue
                try:
                    sock, _ = self._listener.accept()
                except OSError:
                    continue
                if self.is_down:
                    with self._lock:
                        self.refused += 1
                    _reset(sock)
                    continue
                thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
                with self._lock:
                    self.connections += 1
                    self._conns.add(sock)
                    self._threads = [t for t in self._threads if t.is_alive()]
                    self._threads.append(thread)
                thread.start()

    def _serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(CLIENT_IDLE_S)
        client = _Conn(sock)
        try:
            while not self._stopping.is_set():
                head = _read_head(client.reader)
                if head is None or not self._exchange(client, head):
                    break
        except (_Cut, OSError, ValueError):
            pass  # the client went away, or sent something that is not HTTP/1.1
        finally:
            with self._lock:
                self._conns.discard(sock)
            if client.linger:
                client.linger_close()
            else:
                client.close()

    def _note_fault(self, exchange: Exchange) -> None:
        with self._lock:
            self._faulted.append(exchange)

    def _exchange(self, client: _Conn, head: _Head) -> bool:
        """Handle one request; True when the client connection stays open for the next one."""
        method, target, version = [*head.first.split(" ", 2), "", ""][:3]
        exchange = Exchange(method=method, path=target, headers=list(head.headers))
        with self._lock:
            self._log.append(exchange)
            self._in_flight += 1
        started = time.monotonic()
        try:
            return self._dispatch(client, head, exchange, version)
        finally:
            exchange.seconds = time.monotonic() - started
            with self._settled:
                self._in_flight -= 1
                self._settled.notify_all()

    def _dispatch(self, client: _Conn, head: _Head, exchange: Exchange, version: str) -> bool:
        with self._lock:
            delay, down = self._latency, self._down
        if down:
            exchange.fault = "down"
            self._note_fault(exchange)
            client.reset()
            return False
        if delay:
            time.sleep(delay)
        has_body = "chunked" in head.tokens("transfer-encoding") or int(head.get("content-length") or 0) > 0
        conditional = any(k.lower() in CONDITIONAL_HEADERS for k, _ in head.headers)
        rule = self._take_rule(exchange.method, exchange.path, has_body, conditional)
        if rule is not None:
            exchange.fault = rule.kind
            self._note_fault(exchange)
        client_keep = version == "HTTP/1.1" and "close" not in head.tokens("connection")
        if rule is not None and rule.kind == "fail":
            return self._answer_error(client, head, exchange, rule, has_body, client_keep)
        if rule is not None and rule.kind == "delay":
            time.sleep(rule.seconds)
        if rule is not None and rule.kind == "before" and rule.action is not None:
            rule.action(exchange)
        return self._forward(client, head, exchange, rule, has_body, client_keep)

    # ------------------------------------------------------------ faults answered here

    def _answer_error(
        self, client: _Conn, head: _Head, exchange: Exchange, rule: Rule, has_body: bool, keep: bool
    ) -> bool:
        waiting = has_body and "100-continue" in head.tokens("expect")
        if has_body and not waiting:
            for piece in _body_pieces(client.reader, head):  # keep the connection in step
                exchange.body_bytes += len(piece)
        keep = keep and not waiting
        request_id = f"faultproxy-{next(self._ids)}"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{rule.code}</Code><Message>{rule.message} (injected by faultproxy)</Message>"
            f"<Resource>{exchange.path.split('?', 1)[0]}</Resource><RequestId>{request_id}</RequestId></Error>"
        ).encode()
        try:
            phrase = http.HTTPStatus(rule.status).phrase
        except ValueError:
            phrase = "Error"
        lines = [
            f"HTTP/1.1 {rule.status} {phrase}",
            "Content-Type: application/xml",
            f"Content-Length: {len(body)}",
            f"x-amz-request-id: {request_id}",
            *([] if keep else ["Connection: close"]),
        ]
        answer = ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if exchange.method == "HEAD" else body)
        exchange.status = rule.status
        client.send(answer)
        client.linger = not keep  # the body may still come: let the client read the answer first
        return keep

    # ------------------------------------------------------------ forwarding

    def _forwarded_headers(self, head: _Head, target: str) -> list[tuple[str, str]]:
        with self._lock:
            strip, secret = self._strip, self._resign_secret
        headers = [(k, v) for k, v in head.headers if k.lower() != "expect"]
        if not strip or not any(k.lower() in CONDITIONAL_HEADERS for k, _ in headers):
            return headers
        headers = [(k, v) for k, v in headers if k.lower() not in CONDITIONAL_HEADERS]
        return _resign(head.first.split(" ", 1)[0], target, headers, secret) if secret else headers

    def _forward(
        self, client: _Conn, head: _Head, exchange: Exchange, rule: Rule | None, has_body: bool, keep: bool
    ) -> bool:
        headers = self._forwarded_headers(head, exchange.path)
        if has_body and "100-continue" in head.tokens("expect"):
            client.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            upstream_sock = socket.create_connection(self.upstream, timeout=UPSTREAM_TIMEOUT_S)
            upstream_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # head and body go apart
            upstream = _Conn(upstream_sock)
        except OSError:
            exchange.fault = exchange.fault or "upstream unreachable"
            client.reset()
            return False
        try:
            upstream.send(head.encode(headers))
            exchange.forwarded, exchange.forwarded_headers = True, headers
            resetting = rule is not None and rule.kind == "reset"
            cut_at = rule.after_bytes if rule is not None and resetting else None
            corrupt = rule is not None and rule.kind == "corrupt"
            if has_body and not self._send_body(client, upstream, head, exchange, cut_at, corrupt):
                upstream.reset()
                client.reset()
                return False
            response = self._read_response_head(upstream)
            if resetting:  # the upstream answered; the client never hears of it
                upstream.reset()
                client.reset()
                return False
            return self._relay_response(client, upstream, response, exchange) and keep
        except (_Cut, OSError):  # the upstream (or the client) went away mid-exchange
            client.reset()
            return False
        finally:
            upstream.close()

    def _send_body(
        self,
        client: _Conn,
        upstream: _Conn,
        head: _Head,
        exchange: Exchange,
        cut_at: int | None,
        corrupt: bool,
    ) -> bool:
        """Stream the request body upstream; False when it was cut after ``cut_at`` bytes.

        If the upstream stops reading (it answered early, e.g. 403, and closed), the rest of
        the body is still read from the client, so that the early answer can be relayed.
        """
        chunked = "chunked" in head.tokens("transfer-encoding")
        flip_at = int(head.get("content-length") or 0) // 2 if corrupt and not chunked else None
        sent = 0
        writable = True
        for raw in _body_pieces(client.reader, head):
            exchange.body_bytes += len(raw)
            if corrupt and flip_at is None:
                flip_at = sent + len(raw) // 2  # chunked: the middle of the first piece
            piece = (
                _flip(raw, flip_at - sent)
                if flip_at is not None and sent <= flip_at < sent + len(raw)
                else raw
            )
            if cut_at is not None and sent + len(piece) >= cut_at:
                if cut_at > sent and writable:
                    upstream.send(_frame(piece[: cut_at - sent], chunked))
                return False
            if writable:
                try:
                    upstream.send(_frame(piece, chunked))
                except OSError:
                    writable = False
            sent += len(piece)
        trailers = _read_trailers(client.reader) if chunked else b""
        if chunked and writable:
            with contextlib.suppress(OSError):
                upstream.send(b"0\r\n" + trailers)
        return True

    def _read_response_head(self, upstream: _Conn) -> _Head:
        while True:
            response = _read_head(upstream.reader)
            if response is None:
                raise _Cut("upstream closed the connection without an answer")
            status = int(response.first.split(" ", 2)[1])
            if status >= 200 or status == 101:
                return response
            # an interim answer (100 Continue although no Expect was forwarded, 103): skip it

    def _relay_response(self, client: _Conn, upstream: _Conn, response: _Head, exchange: Exchange) -> bool:
        """Relay the answer byte for byte; True when the client connection can be kept."""
        status = int(response.first.split(" ", 2)[1])
        exchange.status = status
        client.send(response.encode())
        keep = "close" not in response.tokens("connection")
        if exchange.method == "HEAD" or status in (204, 304):
            return keep
        if "chunked" in response.tokens("transfer-encoding"):
            _relay_chunked(upstream.reader, client)
            return keep
        if response.get("content-length") is not None:
            remaining = int(response.get("content-length") or 0)
            while remaining:
                piece = _read_exact(upstream.reader, min(remaining, PIECE))
                remaining -= len(piece)
                client.send(piece)
            return keep
        while piece := upstream.reader.read1(PIECE):  # framed by EOF: the client must see a close too
            client.send(piece)
        return False


_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/([^,]+), *SignedHeaders=([^,]+), *Signature=[0-9a-f]+"
)


def _resign(method: str, target: str, headers: list[tuple[str, str]], secret: str) -> list[tuple[str, str]]:
    """Sign a SigV4 request again after headers were removed (same date, scope and payload hash).

    Requests signed otherwise (presigned URLs, no Authorization) are returned unchanged.
    """
    match = _AUTH.fullmatch(_get(headers, "authorization") or "")
    amz_date, payload = _get(headers, "x-amz-date"), _get(headers, "x-amz-content-sha256")
    if match is None or amz_date is None or payload is None:
        return headers
    access_key, scope, signed = match.groups()
    present = {k.lower() for k, _ in headers}
    names = [n for n in signed.split(";") if n in present]
    canonical_headers = "".join(
        f"{n}:{','.join(' '.join(v.split()) for k, v in headers if k.lower() == n)}\n" for n in names
    )
    path, _, query = target.partition("?")
    pairs = sorted(pair.partition("=")[::2] for pair in query.split("&") if pair)
    canonical = "\n".join(
        [method, path, "&".join(f"{k}={v}" for k, v in pairs), canonical_headers, ";".join(names), payload]
    )
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = f"AWS4{secret}".encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    return [(k, authorization if k.lower() == "authorization" else v) for k, v in headers]


def _flip(piece: bytes, index: int) -> bytes:
    return piece[:index] + bytes([piece[index] ^ 0xFF]) + piece[index + 1 :]


def _frame(piece: bytes, chunked: bool) -> bytes:
    return f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece


def _relay_chunked(reader: io.BufferedReader, client: _Conn) -> None:
    while True:
        size_line = reader.readline(1024)
        if not size_line.endswith(b"\n"):
            raise _Cut("bad chunk size line from upstream")
        client.send(size_line)
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            client.send(_read_trailers(reader))
            return
        while size:
            piece = _read_exact(reader, min(size, PIECE))
            size -= len(piece)
            client.send(piece)
        client.send(_read_exact(reader, 2))


# --------------------------------------------------------------------------- pytest fixture


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[str], FaultProxy]]:
    """Factory: ``fault_proxy("http://127.0.0.1:8333")`` starts a :class:`FaultProxy` in front of it.

    Every proxy the test started is stopped at teardown.
    """
    proxies: list[FaultProxy] = []

    def start(upstream_url: str) -> FaultProxy:
        proxy = FaultProxy(upstream_url).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()
