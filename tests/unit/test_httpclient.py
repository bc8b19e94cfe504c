"""The HTTP client of the stage callables (mds, socrata) against real local servers."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from sluicegate import httpclient


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A forward proxy that answers every request itself, naming the address it was asked for."""

    def do_GET(self) -> None:
        body = f"via proxy: {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_proxy_named_by_http_proxy_carries_the_requests(
    proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Behind a proxy that is the only way out, a client ignoring HTTP_PROXY tries the address itself.
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("http_proxy", proxy)
    with httpclient.client(timeout=5) as client:
        answer = httpclient.send(client, "GET", "http://feed.sluicegate-test.invalid/pages?n=1")
    assert answer.status_code == 200
    assert answer.text == "via proxy: http://feed.sluicegate-test.invalid/pages?n=1"


def test_no_proxy_keeps_a_host_off_the_proxy(proxy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens: a request through it fails
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        for name in ("http_proxy", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        url = f"http://127.0.0.1:{server.server_address[1]}/direct"
        with httpclient.client(timeout=5) as client:
            assert httpclient.send(client, "GET", url).text == "via proxy: /direct"
    finally:
        server.shutdown()
        server.server_close()
