"""Pure functions: durations, masking, zones and windows, templates, settings, SQL files, public API."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import io
import itertools
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from zlib_ng import gzip_ng, zlib_ng

from sluicegate import capture
from sluicegate.config import TimeSpec, load_settings, mask_url, parse_duration
from sluicegate.exceptions import BadPartitionValue, ConfigError
from sluicegate.formats import deflate
from sluicegate.formats.deflate import BLOCK, GzipWriter
from sluicegate.partitions import parse_period, period_of, window_of, zone_of
from sluicegate.paths import safe_relative_path

UTC = dt.UTC


@pytest.mark.parametrize(
    "text,seconds",
    [("90s", 90), ("14m", 840), ("72h", 259200), ("1h30m", 5400), ("2d", 172800), (15, 15), ("0", 0)],
)
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text, where="x") == seconds


@pytest.mark.parametrize(
    "bad", ["soon", "5 parsecs", "-3s", "", "1h fast", "99999999999w", float("inf"), float("nan"), 1e300]
)
def test_parse_duration_rejects(bad: str | float) -> None:
    with pytest.raises(ConfigError, match="x:"):
        parse_duration(bad, where="x")


def test_mask_url_hides_passwords_only() -> None:
    assert mask_url("postgresql://u:p%40ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert "secret" not in mask_url("postgresql://a:secret@h/db?sslmode=require")


@pytest.mark.parametrize(
    "zone,day,hours",
    [
        ("Pacific/Chatham", dt.date(2024, 4, 7), 25),  # DST ends: +13:45 -> +12:45
        ("Pacific/Chatham", dt.date(2024, 9, 29), 23),
        ("Asia/Kolkata", dt.date(2024, 3, 31), 24),
        ("Europe/Brussels", dt.date(2024, 3, 31), 23),
        ("Australia/Adelaide", dt.date(2024, 10, 6), 23),
    ],
)
def test_day_windows_follow_the_zone(zone: str, day: dt.date, hours: int) -> None:
    spec = TimeSpec(column="t", zone=zone)
    start, end = window_of(day, spec, zone)
    assert (end - start) == dt.timedelta(hours=hours)
    assert period_of(start, spec, zone) == day
    assert period_of(end - dt.timedelta(microseconds=1), spec, zone) == day


def test_time_ending_puts_midnight_in_the_previous_day() -> None:
    start_incl = TimeSpec(column="t", zone="Asia/Kolkata")
    ending = dataclasses.replace(start_incl, boundary="end")
    midnight = dt.datetime(2024, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30)))
    assert period_of(midnight, start_incl, "Asia/Kolkata") == dt.date(2024, 1, 2)
    assert period_of(midnight, ending, "Asia/Kolkata") == dt.date(2024, 1, 1)


def test_hour_grain_keeps_both_fall_back_hours_apart() -> None:
    spec = TimeSpec(column="t", grain="hour", name="hour", zone="Europe/Brussels")
    first = period_of(dt.datetime(2024, 10, 27, 0, 30, tzinfo=UTC), spec, "Europe/Brussels")
    second = period_of(dt.datetime(2024, 10, 27, 1, 30, tzinfo=UTC), spec, "Europe/Brussels")
    assert str(first) == "2024-10-27 02:00:00+02:00" and str(second) == "2024-10-27 02:00:00+01:00"
    assert window_of(first, spec, "Europe/Brussels")[1] == window_of(second, spec, "Europe/Brussels")[0]


@pytest.mark.parametrize(
    ("zone", "start"),
    [
        ("Australia/Lord_Howe", "2024-04-06T10:00"),  # back by 30 minutes
        ("Australia/Lord_Howe", "2024-10-05T10:00"),  # forward by 30 minutes
        ("Pacific/Chatham", "2024-04-06T08:00"),  # back by an hour, at 03:45 local
        ("Pacific/Chatham", "2024-09-28T08:00"),  # forward by an hour, at 02:45 local
        ("America/New_York", "2024-11-03T00:00"),
    ],
)
def test_hour_windows_tile_where_the_clocks_move_off_the_hour(zone: str, start: str) -> None:
    """Lord Howe moves its clocks by 30 minutes, Chatham at :45: hours around a change last 30
    to 105 minutes. Cutting the minutes off a local time gave some instants an hour whose window
    did not hold them (rows in no file) and some windows overlapping (rows in two). Every
    instant now lies in its own hour's window, the hour a restored ledger key and a capture
    give it too, and the windows tile."""
    spec = TimeSpec(column="t", grain="hour", name="hour", zone=zone)
    first = dt.datetime.fromisoformat(start).replace(tzinfo=UTC)
    instants = [first + dt.timedelta(minutes=5 * n) for n in range(12 * 12)]
    windows = {window_of(period_of(t, spec, zone), spec, zone) for t in instants}
    assert all(a[1] == b[0] for a, b in itertools.pairwise(sorted(windows)))  # no gap, no overlap
    for t in instants:
        hour = period_of(t, spec, zone)
        start_utc, end_utc = window_of(hour, spec, zone)
        assert start_utc <= t < end_utc
        restored = parse_period(hour.isoformat(), spec, zone)  # as the ledger stores it
        assert restored.astimezone(UTC) == hour.astimezone(UTC)  # type: ignore[union-attr]
    captured = list(capture._periods(instants[0], instants[-1], zone_of(zone), "hour"))
    assert [h.astimezone(UTC) for h in captured] == sorted(
        {period_of(t, spec, zone).astimezone(UTC) for t in instants}
    )


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a//b", "a/./b", "a\\b", "a\x00b", "a\nb", ""])
def test_unsafe_paths_are_rejected(bad: str) -> None:
    with pytest.raises(BadPartitionValue):
        safe_relative_path(bad)


def test_openaq_environment_maps_onto_settings(tmp_path: Path) -> None:
    (tmp_path / "sluicegate.toml").write_text(
        '[source]\nurl = "sqlite:///a.db"\n[destination]\nurl = "out"\n'
    )
    env = {
        "LIMIT": "720",
        "WRITE_FILE_LOCATION": "s3",
        "OPEN_DATA_BUCKET": "openaq-open-data",
        "WRITE_FILE_FORMAT": "parquet",
        "DATABASE_HOST": "db.internal",
        "DATABASE_DB": "openaq",
        "DATABASE_READ_USER": "reader",
        "DATABASE_READ_PASSWORD": "r p@ss",
        "DATABASE_WRITE_USER": "writer",
        "DATABASE_WRITE_PASSWORD": "w",
    }
    s = load_settings(tmp_path, env)
    assert (s.limit, s.format, s.destination.url) == (720, "parquet", "s3://openaq-open-data")
    assert s.source_url == "postgresql://reader:r%20p%40ss@db.internal:5432/openaq"
    assert s.ledger_url.startswith("postgresql://writer:w@")
    assert "r p@ss" not in repr(s) and "r%20p%40ss" not in repr(s)
    ours = load_settings(
        tmp_path, {**env, "SLUICEGATE_DEFAULTS__LIMIT": "5", "SLUICEGATE_SOURCE__URL": "sqlite:///b.db"}
    )
    assert ours.limit == 5 and ours.source_url.endswith("/b.db")
    # No write user: the ledger is the source's database with the source's user (it was a URL
    # with no user at all, which libpq took as the OS user's).
    reader = {k: v for k, v in env.items() if not k.startswith("DATABASE_WRITE_")}
    assert load_settings(tmp_path, reader).ledger_url == s.source_url
    with pytest.raises(ConfigError, match="WRITE_FILE_LOCATION='ftp' is not a valid location"):
        load_settings(tmp_path, {"WRITE_FILE_LOCATION": "ftp"})
    # s3 without a bucket wrote the files to the file's local folder without a word
    for bucketless in ({"WRITE_FILE_LOCATION": "s3"}, {"WRITE_FILE_LOCATION": "s3", "OPEN_DATA_BUCKET": ""}):
        with pytest.raises(ConfigError, match=r"^WRITE_FILE_LOCATION=s3 needs OPEN_DATA_BUCKET"):
            load_settings(tmp_path, bucketless)
    both = {"WRITE_FILE_LOCATION": "s3", "OPEN_DATA_BUCKET": "b", "SLUICEGATE_DESTINATION__URL": "out"}
    with pytest.raises(ConfigError, match=r"^WRITE_FILE_LOCATION=s3 names bucket 'b', but SLUICEGATE_DEST"):
        load_settings(tmp_path, both)  # it said the bucket was missing
    in_file = load_settings(
        tmp_path, {"WRITE_FILE_LOCATION": "s3", "SLUICEGATE_DESTINATION__URL": "s3://b/p"}
    )
    assert in_file.destination.url == "s3://b/p"  # the bucket given another way is enough


def test_block_gzip_is_standard_and_deterministic(tmp_path: Path) -> None:
    """Large CSV.gz is compressed in blocks on several threads: one ordinary gzip member, same bytes."""
    rows = "".join(
        f"{i},{i * 7919 % 300},Site {i % 97},2026-10-05T{i % 24:02d}:00:00+05:30,0.{i % 1000:03d}\n"
        for i in range(120_000)
    )
    data = rows.encode() * 3  # ~11 MiB: eleven blocks and a part

    def compress(pieces: list[bytes]) -> bytes:
        out = io.BytesIO()
        writer = GzipWriter(out, 6)
        for piece in pieces:
            writer.write(piece)
        writer.close()
        return out.getvalue()

    whole = compress([data])
    assert whole == compress([data[i : i + 7777] for i in range(0, len(data), 7777)])  # any write sizes
    # Pieces are kept as views until a block fills: a caller that reuses its (mutable) buffer
    # after write() must not change what was written.
    out = io.BytesIO()
    writer = GzipWriter(out, 6)
    scratch = bytearray(3 * BLOCK // 2)
    for i in range(0, len(data), len(scratch)):
        piece = data[i : i + len(scratch)]
        scratch[: len(piece)] = piece
        writer.write(memoryview(scratch)[: len(piece)])
    scratch[:] = b"x" * len(scratch)
    writer.close()
    assert out.getvalue() == whole
    assert gzip.decompress(whole) == data and len(whole) < len(data) / 3
    target = tmp_path / "big.csv.gz"
    target.write_bytes(whole)
    unzipped = subprocess.run(["gzip", "-dc", str(target)], capture_output=True, check=True).stdout
    assert unzipped == data  # the system's gunzip reads it too
    # Below one block: byte for byte what zlib-ng's gzip_ng.GzipFile(filename="", mtime=0) writes.
    small = data[: BLOCK // 2]
    reference = io.BytesIO()
    with gzip_ng.GzipFile(filename="", fileobj=reference, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(small)
    assert compress([small]) == reference.getvalue()
    # zlib-ng's deflate, whatever zlib the machine's Python has (Fedora's is zlib-ng too)
    assert deflate.zlib is zlib_ng
    assert (
        gzip.decompress(compress([])) == b""
        and gzip.decompress(compress([data[: 2 * BLOCK]])) == data[: 2 * BLOCK]
    )


def test_parquet_row_groups_do_not_follow_the_batches(tmp_path: Path) -> None:
    """A partition's Parquet bytes depend on its rows only, not on how the database batched them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sluicegate.formats.parquet import ROW_GROUP_ROWS, ParquetWriter
    from sluicegate.sources import Column

    columns = [
        Column(name="id", kind="int"),
        Column(name="site", kind="text"),
        Column(name="v", kind="float"),
    ]
    n = ROW_GROUP_ROWS * 2 + 12_345
    table = pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "site": pa.array([f"Site {i % 97}" for i in range(n)]),
            "v": pa.array([i / 7 for i in range(n)], pa.float64()),
        }
    )

    def encode(cuts: list[int]) -> bytes:
        out = io.BytesIO()
        writer = ParquetWriter(out, columns, None)
        for start, end in zip([0, *cuts], [*cuts, n], strict=True):
            writer.write(table.slice(start, end - start), "arrow")
        writer.close()
        assert writer.rows == n
        return out.getvalue()

    whole = encode([])
    assert whole == encode([65_536 * k for k in range(1, n // 65_536 + 1)])  # ADBC-sized batches
    assert whole == encode([1, 999, 200_000, 200_001])  # and odd ones
    path = tmp_path / "p.parquet"
    path.write_bytes(whole)
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [
        ROW_GROUP_ROWS,
        ROW_GROUP_ROWS,
        12_345,
    ]
    assert pq.read_table(path).equals(table)


def test_parquet_row_groups_of_wide_rows_stay_near_the_byte_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wide rows get fewer rows per group, chosen from the first rows, so batching still does not matter."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sluicegate.formats import parquet
    from sluicegate.sources import Column

    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", 4 << 20)  # 4 MiB instead of 64
    columns = [Column(name="id", kind="int"), Column(name="doc", kind="text")]
    n = 10_000
    table = pa.table(
        {"id": pa.array(range(n), pa.int64()), "doc": pa.array([f"{i:06d}" + "x" * 1000 for i in range(n)])}
    )

    def encode(cuts: list[int]) -> bytes:
        out = io.BytesIO()
        writer = parquet.ParquetWriter(out, columns, None)
        for start, end in zip([0, *cuts], [*cuts, n], strict=True):
            writer.write(table.slice(start, end - start), "arrow")
            assert writer.held < 2 * (4 << 20) + 1_100 * (end - start)  # never much more than a group
        writer.close()
        return out.getvalue()

    whole = encode([])
    assert whole == encode(list(range(700, n, 700))) == encode([1, 1023, 1024, 5000])
    path = tmp_path / "wide.parquet"
    path.write_bytes(whole)
    meta = pq.ParquetFile(path).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    # ~1,018 bytes a row: 4 MiB holds 4,119 rows, rounded down to whole 1,024-row steps.
    assert sizes == [4096, 4096, 1808]
    assert pq.read_table(path).equals(table)


def test_small_parquet_files_are_encoded_in_memory_without_dictionaries(tmp_path: Path) -> None:
    """A location-day's file (tens to hundreds of rows) is encoded in one piece, off the GIL, with
    plain pages (smaller and faster below a few thousand rows) and, below SNAPPY_ROWS rows, snappy
    instead of zstd; a large one keeps dictionaries and zstd.
    Either way the bytes depend on the rows only, whatever the batches and the source's types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sluicegate.formats.parquet import DICTIONARY_ROWS, SNAPPY_ROWS, ParquetWriter
    from sluicegate.sources import Column

    class Counting(io.BytesIO):
        writes = 0

        def write(self, data: Any) -> int:
            self.writes += 1
            return super().write(data)

    columns = [Column(name="id", kind="int"), Column(name="site", kind="text")]

    def encode(n: int, cuts: list[int], id_type: pa.DataType) -> tuple[bytes, int]:
        table = pa.table({"id": pa.array(range(n), id_type), "site": [f"Site {i % 3}" for i in range(n)]})
        out = Counting()
        writer = ParquetWriter(out, columns, None)
        for start, end in zip([0, *cuts], [*cuts, n], strict=True):
            writer.write(table.slice(start, end - start), "arrow")
        writer.close()
        return out.getvalue(), out.writes

    small, writes = encode(72, [], pa.int64())
    assert writes == 1
    assert 72 < SNAPPY_ROWS <= 500 < DICTIONARY_ROWS
    medium, _ = encode(500, [], pa.int64())
    assert encode(500, [100, 130], pa.int32())[0] == medium  # the codec follows the rows, not the batches
    assert encode(72, [10, 11, 50], pa.int32())[0] == small  # int4 from PostgreSQL, cast to int64
    large, _ = encode(DICTIONARY_ROWS, [], pa.int64())
    assert encode(DICTIONARY_ROWS, [1000, 2000], pa.int32())[0] == large
    for data, dictionary in ((small, False), (medium, False), (large, True)):
        path = tmp_path / "f.parquet"
        path.write_bytes(data)
        meta = pq.ParquetFile(path).metadata
        assert meta.row_group(0).column(1).has_dictionary_page is dictionary
        # zstd's per-column set-up outweighs a few dozen rows; snappy is as small there.
        codec = "SNAPPY" if meta.num_rows < SNAPPY_ROWS else "ZSTD"
        assert [meta.row_group(0).column(i).compression for i in range(2)] == [codec, codec]
        assert pq.read_table(path).column("site").to_pylist()[:4] == ["Site 0", "Site 1", "Site 2", "Site 0"]


def test_processes_opening_a_new_sqlite_ledger_at_once_all_get_in(tmp_path: Path) -> None:
    # Switching a new file to WAL answers "database is locked" at once (no busy wait) to every
    # process but one; two workers started together on a fresh ledger must both get in.
    code = (
        "import sys, time; from sluicegate import db\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "db.connect(sys.argv[1], ledger=True).execute('CREATE TABLE IF NOT EXISTS t (x)')\n"
    )
    for attempt in range(5):
        url = f"sqlite:///{tmp_path}/fresh{attempt}.db"
        start = str(time.time() + 1.0)
        procs = [
            subprocess.Popen([sys.executable, "-c", code, url, start], stderr=subprocess.PIPE)
            for _ in range(4)
        ]
        errors = [p.communicate(timeout=60)[1].decode() for p in procs]
        assert all(p.returncode == 0 for p in procs), errors


def test_a_sqlite_write_lock_held_elsewhere_says_who_holds_it_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sqlite3 shell left in BEGIN IMMEDIATE on the project's database: install, backfill,
    # reexport and mark waited 60 s, then said only "ledger database ...: database is locked".
    from sluicegate import db
    from sluicegate.exceptions import LedgerError

    monkeypatch.setattr(db, "SQLITE_BUSY_SECONDS", 0.2, raising=False)
    url = f"sqlite:///{tmp_path}/held.db"
    conn = db.connect(url, ledger=True)  # the file in WAL mode, as every sluicegate database
    holder = sqlite3.connect(tmp_path / "held.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(LedgerError) as raised, db.wrap_errors(url, ledger=True):
        conn.execute("BEGIN IMMEDIATE")
    message = str(raised.value)
    assert f"ledger database {url}: database is locked" in message, message
    assert "another process held its write lock for 0.2 s" in message, message
    assert "end that process's open transaction" in message, message
    holder.execute("ROLLBACK")


def test_a_read_only_sqlite_database_or_folder_says_what_to_make_writable(tmp_path: Path) -> None:
    # A project on a read-only mount (or a database file or folder of another user): `status`
    # said "ledger database ...: unable to open database file" (its WAL files cannot be made)
    # and `run` "attempt to write a readonly database", with nothing on what to change.
    from sluicegate import db

    url = f"sqlite:///{tmp_path}/ro.db"
    sqlite3.connect(tmp_path / "ro.db").execute("CREATE TABLE t (x)")
    reader = sqlite3.connect(f"file:{tmp_path}/ro.db?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as readonly:
        reader.execute("INSERT INTO t VALUES (1)")
    unopenable = sqlite3.OperationalError("unable to open database file")
    for exc in (readonly.value, unopenable):
        message = str(db.translate(exc, url, ledger=True))
        assert message.startswith(f"ledger database {url}: {exc}; make {tmp_path}/ro.db and its folder"), (
            message
        )
        assert f"{tmp_path} writable by this user" in message and "ro.db-wal" in message, message


def test_a_full_disk_under_a_sqlite_database_is_retried_and_says_to_free_space(tmp_path: Path) -> None:
    # SQLITE_FULL ("database or disk is full": the ledger's WAL, or a sort's temp space, on a
    # full disk) was terminal: a partition whose query hit it was parked at once, while a full
    # export folder (ENOSPC) is retried; and the message said nothing of what to do.
    from sluicegate import db
    from sluicegate.exceptions import SourceUnavailable

    url = f"sqlite:///{tmp_path}/full.db"
    full = sqlite3.OperationalError("database or disk is full")
    assert db.classify(full) == "transient"
    error = db.translate(full, url)
    assert isinstance(error, SourceUnavailable), error
    assert f"database or disk is full; free space on the file system of {tmp_path}" in str(error), error
    assert "free space" in str(db.translate(full, url, ledger=True))


def test_a_file_past_the_spool_on_a_full_disk_says_to_free_space(tmp_path: Path) -> None:
    # A file over SPOOL_BYTES reaches the disk while it is written, not at publish: its error named
    # only the hidden temp file and "No space left on device", where a small file's said what to do.
    from sluicegate.destinations import SPOOL_BYTES
    from sluicegate.destinations.local import LocalDestination
    from sluicegate.exceptions import DestinationUnavailable

    out = tmp_path / "out"
    out.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(out)]).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    destination = LocalDestination(str(out))
    staged = destination.stage("big.csv")
    try:
        with pytest.raises(DestinationUnavailable) as full:
            staged.file.write(b"x" * (SPOOL_BYTES + 1))
    finally:
        destination.discard(staged)
        subprocess.run(["umount", str(out)], check=True)
    assert str(full.value).endswith(
        f"No space left on device; free space on the file system of {out}, and the next run writes it again"
    ), full.value


@pytest.mark.parametrize(
    "limit,workers,shares",
    [(None, 2, [None, None]), (6, 3, [2, 2, 2]), (5, 2, [3, 2]), (4, 3, [2, 1, 1]), (1, 3, [1]), (0, 2, [0])],
)
def test_a_limit_is_shared_out_exactly_between_workers(
    limit: int | None, workers: int, shares: list[int | None]
) -> None:
    from sluicegate.drivers.partitioned import limit_shares

    assert limit_shares(limit, workers) == shares


@pytest.mark.parametrize(
    "url,cores,workers",
    [
        ("postgresql://u@h/db", 2, 2),
        ("postgres://u@h/db", 16, 2),
        ("postgresql://u@h/db", 1, 1),
        ("mariadb://u@h/db", 2, 2),
        ("mysql://u@h/db", 1, 1),
        ("sqlite:///m.db", 2, 1),
    ],
)
def test_workers_default_to_two_on_a_database_server_with_two_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, cores: int, workers: int
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    (tmp_path / "sluicegate.toml").write_text(f'[source]\nurl = "{url}"\n[destination]\nurl = "out"\n')
    assert load_settings(tmp_path, {}).workers == workers
    assert load_settings(tmp_path, {"SLUICEGATE_DEFAULTS__WORKERS": "3"}).workers == 3
    assert load_settings(tmp_path, {"SLUICEGATE_DEFAULTS__WORKERS": "Auto"}).workers == workers


def test_the_parquet_writers_layout_is_shared_per_zone_and_tells_schemas_apart() -> None:
    """A zone's files share one layout (found by the columns list's identity); source schemas are
    told apart by type and metadata; casting in place gives exactly the rebuilt table's schema."""
    import io

    import pyarrow as pa

    from sluicegate.formats.parquet import ParquetWriter, _layout
    from sluicegate.sources import Column

    columns = [Column(name="t", kind="timestamptz"), Column(name="v", kind="int")]
    paris = _layout(columns, "Europe/Paris")
    assert _layout(columns, "Europe/Paris") is paris and _layout(columns, "UTC") is not paris
    assert _layout(list(columns), "Europe/Paris") is not paris  # another list: its own layout
    utc_schema = pa.schema([pa.field("t", pa.timestamp("us", tz="UTC")), pa.field("v", pa.int64())])
    plain = paris.conversion(utc_schema)
    assert paris.conversion(pa.schema(list(utc_schema))) is plain  # equal schema: found
    assert plain.casts == (0,) and plain.in_place
    tagged = paris.conversion(utc_schema.with_metadata({b"k": b"v"}))
    required = paris.conversion(pa.schema([utc_schema.field(0), pa.field("v", pa.int64(), nullable=False)]))
    assert tagged is not plain and not tagged.in_place and not required.in_place
    target = pa.schema([pa.field("t", pa.timestamp("us", tz="Europe/Paris")), pa.field("v", pa.int64())])
    table = pa.table({"t": pa.array([0, 3_600_000_000], pa.timestamp("us", tz="UTC")), "v": [1, 2]})
    for source in (table, table.replace_schema_metadata({b"k": b"v"})):
        converted = paris.conversion(source.schema).apply(source)
        assert converted.schema.equals(target, check_metadata=True) and converted["v"].to_pylist() == [1, 2]
        assert converted["t"].cast(pa.int64()).to_pylist() == [0, 3_600_000_000]
    files = []
    for source in (table, table.replace_schema_metadata({b"k": b"v"})):
        out = io.BytesIO()
        writer = ParquetWriter(out, columns, "Europe/Paris")
        writer.write(source, "arrow")
        writer.close()
        files.append(out.getvalue())
    assert files[0] == files[1]  # cast in place or rebuilt: the same file


@pytest.mark.parametrize(
    "schedule,now,tick",
    [
        # Europe/Brussels falls back at 03:00 CEST (01:00 UTC) on 2026-10-25: 02:00-02:59 twice.
        ("*/30 * * * *", "01:00", "01:00"),  # was 00:00 (an hour back): 01:00 and 01:30 never fired
        ("*/30 * * * *", "01:36", "01:30"),  # was 00:30
        ("0 * * * *", "01:12", "01:00"),  # was 00:00
        ("30 2 * * *", "01:12", "00:30"),  # was 2026-10-24 00:30: the day before
        ("30 2 * * *", "01:36", "00:30"),  # a fixed time ticks once, at its first pass (as cron)
        ("*/5 * * * *", "01:03", "01:00"),  # an aggregate every 5 minutes: its tick stood still an hour
        ("*/30 * * * *", "00:40", "00:30"),  # before the change, as before
        ("0 * * * *", "02:06", "02:00"),  # after it
    ],
)
def test_a_schedule_ticks_on_through_the_hour_a_fall_back_repeats(schedule: str, now: str, tick: str) -> None:
    """croniter's get_prev went back an hour (or a day) in the repeated hour: a serve replica saw
    an old tick and fired nothing, and an aggregate task on a cron schedule re-found its done tick
    for an hour, leaving its table stale."""
    from sluicegate.schedules import latest_tick

    day = dt.datetime(2026, 10, 25, tzinfo=UTC)
    at = dt.datetime.combine(day.date(), dt.time.fromisoformat(now), tzinfo=UTC)
    assert latest_tick(schedule, "Europe/Brussels", at + dt.timedelta(seconds=7)) == dt.datetime.combine(
        day.date(), dt.time.fromisoformat(tick), tzinfo=UTC
    )


def test_a_fixed_time_that_comes_twice_ticks_once_and_the_day_it_ends_is_25_hours() -> None:
    """America/Havana's clocks go back from 01:00 to 00:00 on 2024-11-03, so its midnight comes
    twice: "0 0 * * *" ticked at both (04:00 and 05:00 UTC), and its windows of width = "schedule"
    were 24 hours and 1 hour, not the 25-hour local day docs/aggregate.md promises. A schedule with
    a fixed hour and minute ticks once at a wall time that repeats, at its first pass (as Vixie
    cron); one whose minute or hour is "*" ticks in both passes; a skipped wall time still ticks
    when the clocks have jumped past it (midnight of 2024-03-10: 01:00 CDT)."""
    from sluicegate.schedules import latest_tick, longest_gap

    utc = lambda *a: dt.datetime(*a, tzinfo=UTC)  # noqa: E731
    nows = [utc(2024, 11, 3, 3) + dt.timedelta(minutes=20 * k) for k in range(3 * 28)]
    ticks = sorted({latest_tick("0 0 * * *", "America/Havana", now) for now in nows})
    assert ticks == [utc(2024, 11, 2, 4), utc(2024, 11, 3, 4), utc(2024, 11, 4, 5)]
    assert latest_tick("0 0 * * *", "America/Havana", utc(2024, 11, 4, 5) - dt.timedelta(microseconds=1)) == (
        utc(2024, 11, 3, 4)
    )  # the window of 4 Nov 00:00: all of 3 Nov, 25 hours
    assert longest_gap("0 0 * * *", "America/Havana", utc(2024, 6, 1), beyond=24.5 * 3600) == 25 * 3600
    hourly = {latest_tick("0 * * * *", "America/Havana", now) for now in nows[:12]}
    assert hourly == {utc(2024, 11, 3, h) for h in range(3, 7)}  # 00:00 twice: an hour apart
    brussels = lambda schedule, *a: latest_tick(schedule, "Europe/Brussels", utc(*a))  # noqa: E731
    assert brussels("30 2 * * *", 2024, 10, 27, 2) == utc(2024, 10, 27, 0, 30)  # 02:30 CEST
    assert brussels("*/30 2 * * *", 2024, 10, 27, 1, 40) == utc(2024, 10, 27, 1, 30)  # 02:30 CET
    assert brussels("15,45 2 * * *", 2024, 10, 27, 1, 20) == utc(2024, 10, 27, 0, 45)  # 02:45 CEST
    assert latest_tick("0 0 * * *", "America/Havana", utc(2024, 3, 10, 5, 30)) == utc(2024, 3, 10, 5)


@pytest.mark.parametrize("hours", range(0, 24 * 12, 7))
def test_a_schedule_s_longest_gap_at_a_clock_change_is_found_whatever_keep(hours: int) -> None:
    """0 3-23 * * * in America/New_York: 4 h from 23:00 to 03:00, 5 h the night the clocks go back.
    With keep = "4h30m" (shorter than a year's 400th, 22 h) the gap was looked for only around
    instants 22 h apart, which missed that one night in most years' samplings (45 of 58 load
    times here), so keep = "4h30m" was accepted with width = "schedule" and a 5 h window."""
    from sluicegate.schedules import longest_gap

    now = dt.datetime(2026, 1, 1, tzinfo=UTC) + dt.timedelta(hours=hours, minutes=hours % 60)
    assert longest_gap("0 3-23 * * *", "America/New_York", now, beyond=4.5 * 3600) == 5 * 3600
    assert longest_gap("0 3-23 * * *", "America/New_York", now, beyond=5 * 3600) == 0.0
    assert longest_gap("0 0-9,20-23 * * *", "Europe/Brussels", now, beyond=10.5 * 3600) == 11 * 3600


def test_rows_of_a_signed_tinyint_without_a_negative_are_not_copied() -> None:
    """MariaDB's driver reads a signed TINYINT's -1 as 255, so its rows are put right. Copying
    every row of every chunk to do so added a third to the driver's fetch time for any table
    with a BOOLEAN; a chunk with no value above 127 is now returned as it is, and one with some
    has those put right and nothing else changed."""
    from sluicegate.sources.mariadb_values import with_signed_tiny

    rows = [(1, 0, "a"), (2, None, "b"), (3, 127, "c")]
    assert with_signed_tiny(rows, [1]) is rows
    rows = [(1, 255, 200), (2, None, 5), (3, 128, 7)]
    assert with_signed_tiny(rows, [1, 2]) == [(1, -1, -56), (2, None, 5), (3, -128, 7)]
    assert with_signed_tiny(rows, [1]) == [(1, -1, 200), (2, None, 5), (3, -128, 7)]
