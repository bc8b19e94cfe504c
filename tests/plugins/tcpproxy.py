"""A TCP relay that can cut a database off, and the ``tcp_proxy`` pytest fixture.

:class:`TcpProxy` listens on 127.0.0.1 (a free port) and relays every connection, byte for
byte, to one upstream ``host:port`` (PostgreSQL, say). :meth:`~TcpProxy.down` resets every
open connection on both sides (the client sees a dropped connection; the server sees its
client gone and rolls back its transaction) and resets new ones at accept, until
:meth:`~TcpProxy.up`: a database that is unreachable for a while, then back.

Standard library only, so that scripts outside pytest can use it too.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

PIECE = 64 * 1024


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), not FIN.

    ``shutdown`` first: ``close`` alone does not end a ``recv`` blocked in another thread
    (the relay's), so the peer would hear nothing until that ``recv`` returned.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """Relays 127.0.0.1:<port> to ``upstream`` (host, port); ``down()`` cuts it off."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.host, self.port = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._down = False
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name=f"tcpproxy-{self.port}", daemon=True)
        self.accepted = 0  # connections relayed
        self.refused = 0  # connections reset at accept while down
        self.cut = 0  # open connections reset by down()

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and reset every open connection."""
        self._stopping.set()
        self._thread.join(timeout=10)
        self._cut_all()
        with contextlib.suppress(OSError):
            self._listener.close()

    def down(self) -> None:
        """Reset every open connection, and every new one, until :meth:`up`."""
        with self._lock:
            self._down = True
        self.cut += self._cut_all()

    def up(self) -> None:
        """Relay new connections again."""
        with self._lock:
            self._down = False

    def _cut_all(self) -> int:
        with self._lock:
            pairs, self._pairs = list(self._pairs), set()
        for client, server in pairs:
            _reset(client)
            _reset(server)
        return len(pairs)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                down = self._down
            if down:
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                _reset(client)
                continue
            for sock in (client, server):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, server)
            with self._lock:
                self._pairs.add(pair)
                self.accepted += 1
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        try:
            while data := src.recv(PIECE):
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:  # one side ended: end both (unless down() already did)
            mine = pair in self._pairs
            self._pairs.discard(pair)
        if mine:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str, int], TcpProxy]]:
    """Factory: ``tcp_proxy(host, port)`` starts a :class:`TcpProxy`; all are stopped at teardown."""
    proxies: list[TcpProxy] = []

    def start(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy((host, port)).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()
