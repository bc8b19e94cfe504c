"""CSV's text of a MariaDB FLOAT (a single widened to a double), as PostgreSQL writes a real."""

from __future__ import annotations

import struct

import pytest

from sluicegate.formats import csv as csv_format


def _single(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.1, "0.1"),
        (-2.5, "-2.5"),
        (1234567.0, "1.234567e+06"),
        (1e-05, "1e-05"),
        (3e10, "3.0000001e+10"),  # 3e10 is the midpoint below this single: PostgreSQL leaves it out
        (3.4028234663852886e38, "3.4028235e+38"),
        (1e-45, "1e-45"),
    ],
)
def test_a_single_is_written_with_the_digits_postgresql_gives_a_real(value: float, text: str) -> None:
    assert csv_format.single_text(_single(value)) == text


def test_a_single_is_written_without_decimal_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """single_text runs for every FLOAT value of a CSV file: the exact (Decimal, 200 digits)
    interval made it 20 times float_text's cost; a single's bounds are exact doubles."""

    def slow(_size: float) -> None:
        raise AssertionError("the Decimal interval was computed for a single")

    monkeypatch.setattr(csv_format, "_single_interval", slow)
    assert csv_format.single_text(_single(0.1)) == "0.1"
    assert csv_format.single_text(_single(123.456)) == "123.456"


def test_a_double_below_every_single_is_written_as_a_double() -> None:
    assert csv_format.single_text(1e-300) == csv_format.float_text(1e-300)
