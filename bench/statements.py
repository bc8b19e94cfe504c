"""Which statements one ``sluicegate run`` sends to its database: where the round trips go.

    .venv/bin/python bench/statements.py --rows 300000 --format parquet
    PYTHONPATH=/tmp/before/src .venv/bin/python bench/statements.py ...   # another tree's run

Loads bench/run.py's dataset, turns on the server's ``log_statement = 'all'``, runs the
``openaq`` task once as bench/run.py's ``sluicegate-csv`` case does (checked the same way), and
counts the statements of the sessions named ``sluicegate`` logged during the measured run (the
harness's own marking before it is left out), by their first words, literals and numbers
blanked. Against a database in another region each is at least one round trip.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import psycopg
import run as bench

_LINE = re.compile(r"^\d+ sluicegate LOG:  (?:statement|execute [^:]*): (.*)$", re.M)


def shape(statement: str) -> str:
    """A statement's first 90 characters, its literals and numbers blanked."""
    text = re.sub(r"\s+", " ", statement.strip())[:90]
    return re.sub(r"\b\d+\b", "N", re.sub(r"'[^']*'", "'?'", text))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--format", default="csv.gz", choices=("csv.gz", "csv", "parquet"))
    parser.add_argument("--top", type=int, default=25, help="statement shapes listed")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="sluicegate-statements-", dir="/tmp"))
    os.chmod(base, 0o755)  # the postgres user must traverse it
    pg = bench.PgServer(base)
    pg.start()
    bench._SERVER = pg
    try:
        ds = bench.load(pg, args.rows, bench.locations_for(args.rows))
        ctx = bench.Context(base=base, pg=pg, ds=ds, proj=bench.make_project(base, ds))
        with psycopg.connect(ds.url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET log_statement = 'all'")
            conn.execute("ALTER SYSTEM SET log_line_prefix = '%p %a '")
            conn.execute("SELECT pg_reload_conf()")
        starts: list[int] = []
        measure = bench.measure

        def marked(*a: Any, **k: Any) -> Any:
            starts.append(pg.logfile.stat().st_size)  # the measured run's statements begin here
            return measure(*a, **k)

        bench.measure = marked
        run = bench.case_sluicegate(ctx, "openaq", args.format)
        logged = pg.logfile.read_bytes()[starts[-1] :].decode(errors="replace")
        shapes = collections.Counter(shape(m.group(1)) for m in _LINE.finditer(logged))
        print(f"{run.partitions:,} location-days in {run.seconds:.2f} s; {sum(shapes.values()):,} statements")
        for text, n in shapes.most_common(args.top):
            print(f"{n:7,d}  {text}")
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
