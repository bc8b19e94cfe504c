"""A TCP relay that delays what clients send by a fixed time: a far endpoint, like ``tc netem``.

    python bench/latency_proxy.py UPSTREAM_HOST:PORT SECONDS

listens on a free port of 127.0.0.1 (printed as ``http://127.0.0.1:PORT`` on the first line
of stdout) and relays every connection to the upstream. Each piece a client sends reaches the
upstream ``SECONDS`` after it arrived (pieces keep their order; a slow piece never holds back
the pieces of other connections); answers are relayed at once. So every HTTP request, whole
on the wire, waits that long before the upstream sees it: one added round trip per request,
as to S3 in another region. One upstream connection per client connection (keep-alive works).

The fault proxy of tests/plugins/faultproxy.py can add latency too, but it parses HTTP and
opens an upstream connection per request on a thread per connection: at the request rates of
bench/run.py's ``sluicegate-s3-csv-30ms`` case it would be the bottleneck. This one is
asyncio, in its own process, and costs a few microseconds per piece.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

PIECE = 256 * 1024


async def _relay_delayed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(PIECE):
            queue.put_nowait((time.monotonic() + delay, data))
    finally:
        queue.put_nowait((time.monotonic() + delay, b""))
        with contextlib.suppress(OSError, ConnectionError):
            await sender


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(PIECE):
            writer.write(data)
            await writer.drain()
        writer.write_eof()


async def main(upstream: str, delay: float) -> None:
    host, _, port = upstream.rpartition(":")

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(host, int(port))
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(_relay_delayed(client_r, up_w, delay), _relay(up_r, client_w))
        except (OSError, ConnectionError):
            pass
        finally:
            for w in (up_w, client_w):
                with contextlib.suppress(OSError):
                    w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(sys.argv[1], float(sys.argv[2])))
