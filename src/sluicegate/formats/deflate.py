"""gzip compressed on several cores, with the same bytes for the same data.

Large CSV.gz partitions were compressed by one thread while the same thread also read and
encoded the rows. :class:`GzipWriter` compresses the data in blocks on a thread pool, the way
pigz does. Each block is compressed on its own as raw deflate, primed with the previous 32 KiB
of data as the dictionary. Every block but the last ends with a sync flush (byte-aligned, not
final), and the last one ends the stream, so the blocks chain into one ordinary gzip member
that any gunzip reads.

The bytes depend only on the data: blocks start at fixed offsets, whatever the sizes of the
writes. Data shorter than one block gives the same bytes as ``gzip_ng.GzipFile(filename="",
mtime=0)`` at the same level.

Deflate is zlib-ng's (the ``zlib-ng`` package), not the system zlib's: at level 6 it
compressed the benchmark's CSV 1.3-1.4x faster, and 2-9 % smaller (not on every input;
bench/README.md, "zlib-ng"). Its bytes differ from zlib's, and may differ between zlib-ng
releases and CPU architectures (x86-64 and ARM): a file exported again after such a change is
uploaded again rather than skipped as unchanged, nothing worse.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from zlib_ng import zlib_ng as zlib

BLOCK = 1024 * 1024  # uncompressed bytes per block
WINDOW = 32 * 1024  # deflate's history: the dictionary of the next block
AHEAD = 4  # blocks in flight per file before the writer waits (memory: about AHEAD + 1 blocks)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="sluicegate-deflate"
            )
        return _pool


def _deflate(data: bytes, zdict: bytes, level: int, last: bool) -> bytes:
    if zdict:
        c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_DEFAULT_STRATEGY, zdict)
    else:
        c = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_DEFAULT_STRATEGY)
    return c.compress(data) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class GzipWriter:
    """A write-only gzip stream onto ``out`` (no file name, mtime 0)."""

    def __init__(self, out: BinaryIO, level: int = 6) -> None:
        self._out = out
        self._level = level
        self._crc = 0
        self._size = 0
        # Written data not yet in a block, as read-only views: a block is joined from them in
        # one copy (a bytearray buffer copied each byte three times, ~10 % of a large export's
        # reading thread).
        self._pieces: deque[memoryview] = deque()
        self._held = 0
        self._previous = b""
        self._pending: deque[Future[bytes]] = deque()
        extra_flags = 2 if level == 9 else 4 if level == 1 else 0  # as gzip(_ng).GzipFile writes them
        out.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + bytes([extra_flags, 255]))

    @property
    def buffered(self) -> int:
        """Bytes kept until a block is full (below one block: all of them, compressed by :meth:`close`)."""
        return self._held

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Buffer ``data``; each full block is compressed in the background."""
        view = memoryview(data).cast("B")
        if not view.readonly:  # the caller may reuse a mutable buffer: keep a copy
            view = memoryview(bytes(view))
        size = len(view)
        if size:
            self._pieces.append(view)
            self._held += size
        while self._held >= BLOCK:
            self._submit(self._take(BLOCK))
        return size

    def _take(self, size: int) -> bytes:
        """The first ``size`` held bytes, joined in one copy."""
        parts: list[memoryview] = []
        need = size
        while need:
            piece = self._pieces.popleft()
            if len(piece) > need:
                self._pieces.appendleft(piece[need:])
                piece = piece[:need]
            parts.append(piece)
            need -= len(piece)
        self._held -= size
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)

    def _submit(self, block: bytes) -> None:
        self._crc = zlib.crc32(block, self._crc)
        self._size += len(block)
        self._pending.append(_executor().submit(_deflate, block, self._previous, self._level, False))
        self._previous = block[-WINDOW:]
        while len(self._pending) > AHEAD:
            self._out.write(self._pending.popleft().result())

    def close(self) -> None:
        """Compress the rest, end the stream and write the trailer (CRC-32 and size)."""
        while self._pending:
            self._out.write(self._pending.popleft().result())
        # The last block is compressed here: a small file never leaves the calling thread.
        last = self._take(self._held)
        self._crc = zlib.crc32(last, self._crc)
        self._size += len(last)
        self._out.write(_deflate(last, self._previous, self._level, True))
        self._out.write(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
