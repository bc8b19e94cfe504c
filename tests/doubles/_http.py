"""The HTTP plumbing the doubles share: a stdlib threading server on 127.0.0.1 and request records.

A double subclasses :class:`HttpDouble` and implements :meth:`HttpDouble.handle`, a pure
function from a :class:`Request` to a :class:`Response` (called on the server's handler
threads, so it must hold the double's lock around shared state). The base class records
every request with the status it was answered with, so tests can count calls.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit


@dataclasses.dataclass(frozen=True, kw_only=True)
class Request:
    """One HTTP request as the double saw it."""

    method: str
    path: str
    """The path without the query string, e.g. ``/lime/trips``."""
    query: dict[str, str]
    """Query parameters; when a name repeats, the last value wins."""
    headers: dict[str, str]
    """Header names lower-cased."""
    body: bytes


@dataclasses.dataclass(frozen=True, kw_only=True)
class Response:
    """What a double answers."""

    status: int
    body: Any = None
    """JSON-serialisable; ``None`` sends an empty body."""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    content_type: str = "application/json"
    note: Any = None
    """Not sent: what the double wants to keep about this exchange (see ``HttpDouble._record``)."""

    def encoded(self) -> bytes:
        return b"" if self.body is None else json.dumps(self.body).encode()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recorded:
    """A request and the status the double answered it with."""

    request: Request
    status: int
    at: float
    """``time.monotonic()`` when the request arrived: differences measure back-off."""
    received: dt.datetime
    """Wall-clock arrival time (UTC)."""

    @property
    def path(self) -> str:
        return self.request.path

    @property
    def query(self) -> dict[str, str]:
        return self.request.query

    @property
    def headers(self) -> dict[str, str]:
        return self.request.headers


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive, as real APIs do, so a client's pool is exercised.
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one segment; otherwise Nagle and delayed ACKs add ~40 ms a request.
    disable_nagle_algorithm = True
    wbufsize = -1  # buffered; handle_one_request() flushes after each response
    server: _Server

    def _serve(self) -> None:
        arrived, received = time.monotonic(), dt.datetime.now(dt.UTC)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        query = {name: values[-1] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
        request = Request(
            method=self.command,
            path=parts.path,
            query=query,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        try:
            response = self.server.double.handle(request)
        except Exception as exc:  # a bug in the double: answer 599 so the test sees it, never hang
            response = Response(status=599, body={"double_error": repr(exc)})
        recorded = Recorded(request=request, status=response.status, at=arrived, received=received)
        self.server.double._record(recorded, response)
        payload = response.encoded()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the records are the log."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # kept-alive client connections must not block stop()

    def __init__(self, double: HttpDouble) -> None:
        self.double = double
        super().__init__(("127.0.0.1", 0), _Handler)


class HttpDouble:
    """A real HTTP server on 127.0.0.1 (a free port) that runs in a thread.

    Use it as a context manager (``with Double(...) as d:``) or call :meth:`start` and
    :meth:`stop`. ``url`` is only valid while it runs.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._records: list[Recorded] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already running at {self.url}")
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name=f"{type(self).__name__}-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` with no trailing slash."""
        if self._server is None:
            raise RuntimeError(
                f"{type(self).__name__} is not running; call start() or use it in a with block"
            )
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # ------------------------------------------------------------------ records

    @property
    def records(self) -> list[Recorded]:
        """Every request so far, in arrival order (a copy)."""
        with self.lock:
            return list(self._records)

    def clear_records(self) -> None:
        with self.lock:
            self._records.clear()

    def _record(self, record: Recorded, response: Response) -> None:
        """Keep ``record``; subclasses extend this to keep ``response.note`` too."""
        with self.lock:
            self._records.append(record)

    def handle(self, request: Request) -> Response:
        """Answer one request; subclasses implement it."""
        raise NotImplementedError
