"""Start-up cost of a short command: wall time and peak RSS of ``sluicegate status`` on the demo.

Every cron run and every Lambda cold start pays the interpreter start and the imports before
any work, so a command that reads a few ledger rows should import only what it needs.

    .venv/bin/python bench/startup.py                  # demo project in a temp folder, 10 runs
    .venv/bin/python bench/startup.py --runs 20 --project demo
    .venv/bin/python bench/startup.py -- -C demo tasks # any other command line

Prints the median, best and worst wall time over ``--runs`` fresh processes (after one
warm-up run that is not counted, so the page cache holds the files and the bytecode is
written), the peak RSS (GNU time, when installed) and the machine's load average, which is
the noise indicator on a shared machine. The runs write and use bytecode (``__pycache__``) as
an installed package does, even when ``PYTHONDONTWRITEBYTECODE`` is set; ``--no-bytecode``
measures compiling every module from source on every start instead.
``python -X importtime -c "from sluicegate.cli import main; main()" ...`` shows where the
import time goes.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLUICEGATE = str(Path(sys.executable).with_name("sluicegate"))
GNU_TIME = "/usr/bin/time"


def timed_runs(command: list[str], runs: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    """Run ``command`` ``runs`` times (after one warm-up); return the wall and CPU (user+sys) seconds.

    The CPU time of the process is less sensitive than its wall time to other jobs on a
    shared machine: quote both.
    """
    subprocess.run(command, check=True, capture_output=True, env=env)
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return walls, cpus


def peak_rss_mib(command: list[str], env: dict[str, str]) -> float | None:
    """Peak RSS of one run of ``command`` in MiB, from GNU time (None when it is missing)."""
    if not os.path.exists(GNU_TIME):
        return None
    proc = subprocess.run(
        [GNU_TIME, "-f", "%M", *command], check=True, capture_output=True, text=True, env=env
    )
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10, help="timed runs (median reported)")
    p.add_argument("--project", type=Path, help="an existing project (default: a new demo in a temp folder)")
    p.add_argument("--no-bytecode", action="store_true", help="compile every module on every start")
    p.add_argument("args", nargs="*", help="the sluicegate arguments after -C PROJECT (default: status)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sg-startup-") as tmp:
        # Bytecode goes to a folder of this run (never into the source tree), so "cached" and
        # "compiled on every start" do not depend on what earlier runs left behind.
        env = dict(os.environ, PYTHONPYCACHEPREFIX=str(Path(tmp) / "pycache"))
        if args.no_bytecode:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        project = args.project
        if project is None:
            project = Path(tmp) / "demo"
            subprocess.run([SLUICEGATE, "demo", str(project)], check=True, capture_output=True, env=env)
        command = [SLUICEGATE, "-C", str(project), *(args.args or ["status"])]
        times, cpus = timed_runs(command, args.runs, env)
        rss = peak_rss_mib(command, env)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    bytecode = "compiled on every start" if args.no_bytecode else "cached bytecode"
    print(f"command: sluicegate {' '.join(command[1:])} ({bytecode})")
    print(
        f"wall s over {args.runs} runs: median {statistics.median(times):.3f}, "
        f"best {min(times):.3f}, worst {max(times):.3f}"
    )
    cpu = f"median {statistics.median(cpus):.3f}, best {min(cpus):.3f}"
    print(f"CPU s (user+sys) over {args.runs} runs: {cpu}")
    print(f"peak RSS: {rss:.0f} MiB" if rss is not None else "peak RSS: n/a (no GNU time)")
    print(f"load average (1, 5, 15 min): {load} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
