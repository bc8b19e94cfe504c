"""A/B of sluicegate versions on one loaded dataset: the cases alternate, so both see the same machine.

    .venv/bin/python bench/ab.py --rows 1000000 --repeat 4 --cases parquet,csv \
        before=/tmp/before/src after=src

Each NAME=SRC is a source tree (a checkout's ``src``) that the measured ``sluicegate run``
imports (through PYTHONPATH); the server, the dataset and the harness are bench/run.py's. With
``--source-latency 0.03`` the runs reach the database (source and ledger) through
bench/latency_proxy.py, which delays every piece sent to it by 30 ms: a database in another
region, where each round trip counts. Every
run is checked as bench/run.py checks it, and its data files (not the change feed, whose lines
name the moment) are hashed, so a change that must not alter the bytes can be seen not to.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).parent))
import run as bench

CASES = {
    "csv": ("openaq", "csv.gz"),
    "parquet": ("openaq", "parquet"),
    "large-csv": ("large", "csv.gz"),
    "large-parquet": ("large", "parquet"),
    "daily-csv": ("daily", "csv.gz"),
    "daily-parquet": ("daily", "parquet"),
}


def digest(folder: Path) -> str:
    """A hash of the data files' names and bytes (the change feed's ``_manifests`` and the random
    destination id under ``_sluicegate`` left out)."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not {"_manifests", "_sluicegate"} & set(path.relative_to(folder).parts):
            h.update(str(path.relative_to(folder)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _far(proj: Path, url: str, latency: float) -> subprocess.Popen[str]:
    """bench/latency_proxy.py in front of the database of ``url``; the project ``proj`` reaches
    it through the proxy (its source's url; the ledger defaults to the source)."""
    parts = urlsplit(url)
    user, _, upstream = parts.netloc.rpartition("@")
    proxy = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("latency_proxy.py")), upstream, str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proxy.stdout is not None
    port = proxy.stdout.readline().strip().rpartition(":")[2]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    toml = proj / "sluicegate.toml"
    far = urlunsplit(parts._replace(netloc=netloc))
    toml.write_text(toml.read_text().replace(f'url = "{url}"', f'url = "{far}"', 1))
    return proxy


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default="parquet,csv", help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--source-latency", type=float, default=0.0, help="seconds added to each request")
    parser.add_argument("variants", nargs="+", metavar="NAME=SRC")
    args = parser.parse_args(argv)
    variants = [v.split("=", 1) for v in args.variants]
    cases = args.cases.split(",")
    base = Path(tempfile.mkdtemp(prefix="sluicegate-ab-", dir="/tmp"))
    os.chmod(base, 0o755)  # the postgres user must traverse it
    pg = bench.PgServer(base)
    pg.start()
    bench._SERVER = pg  # measure() reports the server's CPU
    runs: dict[tuple[str, str], list[bench.Run]] = {}
    proxy: subprocess.Popen[str] | None = None
    try:
        ds = bench.load(pg, args.rows, bench.locations_for(args.rows))
        ctx = bench.Context(base=base, pg=pg, ds=ds, proj=bench.make_project(base, ds))
        if args.source_latency:
            proxy = _far(ctx.proj, ds.url, args.source_latency)
        for r in range(args.repeat):
            for case in cases:
                for name, src in variants:
                    os.environ["PYTHONPATH"] = str(Path(src).resolve())
                    run = bench.case_sluicegate(ctx, *CASES[case])
                    made = max((base / "aside").iterdir(), key=lambda d: d.stat().st_mtime_ns)
                    runs.setdefault((case, name), []).append(run)
                    print(
                        f"{case:14s} {name:10s} #{r + 1} {run.seconds:6.2f} s, client CPU {run.cpu_s:5.2f} s,"
                        f" server {run.server_cpu_s:4.1f} s, other {run.other_cpu_s:4.1f} s,"
                        f" data {digest(made)}",
                        flush=True,
                    )
        for (case, name), done in runs.items():
            secs = [r.seconds for r in done]
            spread = f"{min(secs):.2f}-{max(secs):.2f}"
            cpu, mid = statistics.median(r.cpu_s for r in done), statistics.median(secs)
            print(f"{case:14s} {name:10s} median {mid:.2f} s ({spread}), client CPU {cpu:.2f} s")
    finally:
        if proxy is not None:
            proxy.kill()
            proxy.wait()
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
