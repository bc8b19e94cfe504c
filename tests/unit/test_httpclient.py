"""The HTTP client of the stage callables (mds, socrata) against real local servers."""

from __future__ import annotations

import contextlib
import http.server
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sluicegate import httpclient


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A forward proxy that answers every request itself, naming the address it was asked for."""

    def do_GET(self) -> None:
        body = f"via proxy: {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Peer-Port", str(self.client_address[1]))  # a new connection, a new port
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _KeptAlive(_Proxy):
    """:class:`_Proxy` over HTTP/1.1, keeping the connection open between requests."""

    protocol_version = "HTTP/1.1"


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


@pytest.mark.parametrize(
    "no_proxy",
    [
        "127.0.0.1",
        "localhost,127.0.0.1:{port}",
        "example.com, *",
        "10.0.0.0/8, 127.0.0.0/8",
        "::1/128,127.0.0.1/32",
    ],
)
def test_no_proxy_keeps_a_host_off_the_proxy(
    proxy: str, monkeypatch: pytest.MonkeyPatch, no_proxy: str
) -> None:
    """An entry with the port, and ``*`` in a list, are honoured as httpx honoured them (urllib's
    check alone sent such requests to the proxy); an address range as curl and Go honour it."""
    _direct_or_not(monkeypatch, no_proxy, direct=True)


def test_an_address_range_in_no_proxy_keeps_off_the_proxy_only_the_addresses_it_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _direct_or_not(monkeypatch, "10.0.0.0/8,127.0.0.2/32,localhost.invalid", direct=False)


class _Server6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


@pytest.mark.parametrize(
    ("no_proxy", "direct"),
    [("[::1]:{port}", True), ("[::1]", True), (" [0:0::1] ", True), ("::1", True), ("[::1]:1", False)],
)
def test_no_proxy_names_an_ipv6_address_in_brackets_with_or_without_its_port(
    monkeypatch: pytest.MonkeyPatch, no_proxy: str, direct: bool
) -> None:
    """An IPv6 host's entry with its port can only be written in brackets ([fd00::5]:8443, as Go
    reads it): urllib compared it with the unbracketed host and sent the request to the proxy."""
    _direct_or_not(monkeypatch, no_proxy, direct=direct, host="::1")


def _direct_or_not(
    monkeypatch: pytest.MonkeyPatch, no_proxy: str, *, direct: bool, host: str = "127.0.0.1"
) -> None:
    """A request to a server on ``host`` with HTTP_PROXY at a port nothing listens on, so that
    it succeeds only when ``no_proxy`` keeps it off the proxy (``direct``)."""
    kind = _Server6 if ":" in host else http.server.ThreadingHTTPServer
    server = kind((host, 0), _Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens: a request through it fails
        monkeypatch.setenv("NO_PROXY", no_proxy.format(port=server.server_address[1]))
        for name in ("http_proxy", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        url = f"http://{f'[{host}]' if ':' in host else host}:{server.server_address[1]}/direct"
        with httpclient.client(timeout=5) as client:
            if direct:
                assert httpclient.send(client, "GET", url).text == "via proxy: /direct"
            else:
                with pytest.raises(httpx.ConnectError):
                    httpclient.send(client, "GET", url)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An HTTPS server for localhost with a self-signed certificate, and the certificate's file."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeptAlive)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], cert
    finally:
        server.shutdown()
        server.server_close()


class _Tunnel(http.server.BaseHTTPRequestHandler):
    """A forward proxy for HTTPS: CONNECT, then bytes both ways."""

    def do_CONNECT(self) -> None:
        host, _, port = self.path.rpartition(":")
        upstream = socket.create_connection((host, int(port)))
        self.send_response(200)
        self.end_headers()
        sockets = [self.connection, upstream]
        while True:
            readable, _, _ = select.select(sockets, [], [], 5)
            if not readable:
                break
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    upstream.close()
                    return
                (upstream if sock is self.connection else self.connection).sendall(data)
        upstream.close()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("through_proxy", [False, True])
def test_https_with_ssl_cert_file(
    https_server: tuple[int, Path], through_proxy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, cert = https_server
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    tunnel = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Tunnel)
    threading.Thread(target=tunnel.serve_forever, daemon=True).start()
    if through_proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{tunnel.server_address[1]}")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    httpclient.tls_context.cache_clear()
    try:
        with httpclient.client(timeout=5) as client:
            peers = set()
            for n in range(2):  # the second on the connection the first left open
                answer = httpclient.send(client, "GET", f"https://localhost:{port}/tls/{n}")
                assert answer.text == f"via proxy: /tls/{n}"
                peers.add(answer.headers["X-Peer-Port"])
            assert len(peers) == 1, peers
        monkeypatch.delenv("SSL_CERT_FILE")
        httpclient.tls_context.cache_clear()
        with httpclient.client(timeout=5) as client, pytest.raises(httpx.ConnectError, match="CERTIFICATE"):
            httpclient.send(client, "GET", f"https://localhost:{port}/untrusted")
    finally:
        httpclient.tls_context.cache_clear()
        tunnel.shutdown()
        tunnel.server_close()


_PROXY_VARIABLES = ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


@pytest.fixture
def socks5(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real SOCKS5 proxy (pproxy, in its own process) on 127.0.0.1, and its log of what it relayed."""
    with _pproxy(tmp_path) as started:
        yield started


@contextlib.contextmanager
def _pproxy(tmp_path: Path, credentials: str = "") -> Iterator[tuple[str, Path]]:
    """:func:`socks5`'s proxy, wanting ``credentials`` (``user:password``) when given."""
    from plugins.common import free_ports

    [port] = free_ports(1)
    log = tmp_path / "pproxy.log"
    listen = f"socks5://127.0.0.1:{port}" + (f"#{credentials}" if credentials else "")
    with log.open("wb") as out:
        proxy = subprocess.Popen(
            [sys.executable, "-u", "-m", "pproxy", "-l", listen, "-v"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            assert proxy.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield f"127.0.0.1:{port}", log
    finally:
        proxy.kill()
        proxy.wait()


class _Drip(http.server.BaseHTTPRequestHandler):
    """A server that sends its body a byte every 0.1 s for 15 s: never idle for a whole timeout."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "150")
        self.end_headers()
        with contextlib.suppress(OSError):  # the client hung up, as it should
            for _ in range(150):
                self.wfile.write(b"a")
                self.wfile.flush()
                time.sleep(0.1)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
def test_a_socks5_proxy_named_by_all_proxy_carries_the_requests_and_its_waits_are_cut(
    socks5: tuple[str, Path], scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ALL_PROXY=socks5://... (an SSH tunnel's, say) failed every request with an ImportError (httpx
    needs socksio for it), which the block recorded as an unknown, terminal error; and through
    httpx's own SOCKS transport a server dripping its answer was not cut at send()'s whole-answer
    time. The requests go through the proxy (its log names the address asked for), and the drip is
    cut as it is without a proxy."""
    address, log = socks5
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", f"{scheme}://{address}")
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) for handler in (_Proxy, _Drip)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    plain, drip = (server.server_address[1] for server in servers)
    try:
        with httpclient.client(timeout=0.5) as client:
            assert httpclient.send(client, "GET", f"http://localhost:{plain}/via").text == "via proxy: /via"
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout, match="did not arrive whole within 2 s"):
                httpclient.send(client, "GET", f"http://localhost:{drip}/drip")
            assert time.monotonic() - started < 6
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    relayed = log.read_text()
    assert f"-> localhost:{plain}" in relayed and f"-> localhost:{drip}" in relayed, relayed


def test_a_proxy_of_a_scheme_sluicegate_cannot_speak_is_named_with_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ALL_PROXY=socks4://... raised httpx's ValueError "Unknown scheme for proxy URL", recorded as
    an unknown error on the block; it is a ConfigError naming the variable and the proxy, its
    password masked."""
    from sluicegate.exceptions import ConfigError

    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", "socks4://me:s3cr3t@127.0.0.1:1080")
    with httpclient.client(timeout=1) as client, pytest.raises(ConfigError) as caught:
        httpclient.send(client, "GET", "http://localhost:9/")
    said = str(caught.value)
    assert said.startswith("ALL_PROXY names the proxy socks4://") and "socks4 sluicegate cannot speak" in said
    assert "s3cr3t" not in said and "socks5://" in said, said


def test_a_socks5_proxy_that_hangs_up_in_its_handshake_is_a_proxy_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SOCKS5 proxy that hangs up before its reply (pproxy wanting credentials ALL_PROXY does not
    give; a proxy restarting) raised socksio's ProtocolError ("Malformed reply"), no httpx error: mds
    and socrata recorded it as an unknown error and parked the block, where every other failure of
    a proxy (a refused password, a refused CONNECT) is httpx's ProxyError, retried."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with _pproxy(tmp_path, "me:s3cr3t") as (address, log):
        monkeypatch.setenv("ALL_PROXY", f"socks5://{address}")
        with httpclient.client(timeout=2) as client, pytest.raises(httpx.ProxyError, match="Malformed reply"):
            httpclient.send(client, "GET", "http://localhost:9/")
    assert "Unauthorized SOCKS" in log.read_text(), log.read_text()


@pytest.mark.parametrize(
    ("proxy", "why"),
    [
        ("socks5://me:s3cr3t@127.0.0.1:1o80", "Invalid port"),
        ("me:s3cr3t@127.0.0.1:1o80", "Invalid port"),
        ("http://me:s3cr3t@[::1:3128", "no URL"),
        ("socks5://me:s3cr3t@:1080", "names no host"),
    ],
)
def test_a_proxy_address_that_is_no_url_is_named_with_its_variable(
    proxy: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped ALL_PROXY (a port of 1o80) failed each block with httpx's InvalidURL ("Invalid
    port: '1o80'"), taken for a network error and retried, naming neither the variable nor the
    proxy; one with no host was a ConnectError, retried too. Either is a ConfigError as a scheme
    sluicegate cannot speak is: the variable, the proxy (its password masked) and what is wrong."""
    from sluicegate.exceptions import ConfigError

    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", proxy)
    with httpclient.client(timeout=1) as client, pytest.raises(ConfigError) as caught:
        httpclient.send(client, "GET", "http://localhost:9/")
    said = str(caught.value)
    assert said.startswith("ALL_PROXY names the proxy ") and why in said and "then redrive" in said, said
    assert "s3cr3t" not in said, said


def test_a_socks5_proxy_silent_in_its_handshake_is_given_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """httpcore reads a SOCKS5 proxy's handshake with no timeout of its own: one that took the
    connection and never answered (a port that is no SOCKS proxy, an HTTP proxy's, say) held each
    request for send()'s whole-answer time (4 x timeout), where an HTTP proxy's CONNECT has the
    client's timeout. The handshake has the connect timeout."""
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes the connection, says nothing
        monkeypatch.setenv("ALL_PROXY", f"socks5://127.0.0.1:{silent.getsockname()[1]}")
        with httpclient.client(timeout=1) as client, pytest.raises(httpx.TimeoutException) as caught:
            started = time.monotonic()
            httpclient.send(client, "GET", "http://localhost:9/")
        waited = time.monotonic() - started
    assert waited < 2.5 and "whole" not in str(caught.value), (waited, caught.value)
