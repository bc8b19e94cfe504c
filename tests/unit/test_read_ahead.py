"""sources.ahead.read_ahead: the next record batch is read on a thread while this one is encoded."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from sluicegate.sources.ahead import read_ahead


def test_items_arrive_in_order_and_all_of_them() -> None:
    with read_ahead(iter(range(1000))) as items:
        assert list(items) == list(range(1000))


def test_the_next_item_is_read_while_the_consumer_holds_this_one() -> None:
    second_read = threading.Event()

    def source() -> Iterator[int]:
        yield 1
        second_read.set()
        yield 2

    with read_ahead(source()) as items:
        assert next(items) == 1
        # Without a reading thread, item 2 would be read only when asked for: this would time out.
        assert second_read.wait(timeout=10)
        assert next(items) == 2


def test_an_error_of_the_source_reaches_the_consumer_in_its_place() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ConnectionError("server closed the connection")

    seen: list[int] = []
    with pytest.raises(ConnectionError, match="server closed"), read_ahead(source()) as items:
        for item in items:
            seen.append(item)
    assert seen == [1, 2]


def test_leaving_early_stops_the_reader_before_the_source_is_closed() -> None:
    produced: list[int] = []
    threads: list[threading.Thread] = []

    def source() -> Iterator[int]:
        threads.append(threading.current_thread())
        for i in range(100):
            produced.append(i)
            yield i

    with read_ahead(source(), depth=1) as items:
        assert next(items) == 0
    # Joined on leaving: nothing reads the source any more, and it read at most depth + 1 ahead.
    assert threads and not threads[0].is_alive()
    assert threads[0] is not threading.current_thread()
    assert len(produced) <= 3


def test_an_error_of_the_consumer_also_joins_the_reader() -> None:
    reader: list[threading.Thread] = []

    def source() -> Iterator[int]:
        reader.append(threading.current_thread())
        yield from range(10)

    with pytest.raises(RuntimeError, match="encoding failed"), read_ahead(source()) as items:
        next(items)
        raise RuntimeError("encoding failed")
    assert reader and not reader[0].is_alive()
