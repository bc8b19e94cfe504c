"""Prometheus text exposition for /metrics (written by hand: a handful of series)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .runs import Metrics

STATES = ("pending", "claimed", "exported", "failed", "waiting")


def _label(value: str) -> str:
    return value.replace("\\\\", "\\\\\\\\").replace('"', '\\\\"').replace("\\n", "\\\\n")


def render(statuses: Sequence[dict[str, Any]], counters: Metrics) -> str:
    """Gauges from the ledger (``statuses``) and this process's counters."""
    out: list[str] = []

    def family(name: str, kind: str, text: str) -> None:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")

    family("sluicegate_partitions", "gauge", "Partitions by state, from the ledger.")
    for st in statuses:
        if "error" in st or st.get("kind") == "incremental":
            continue
        for state in STATES:
            out.append(f'sluicegate_partitions{{task="{_label(st["task"])}",state="{state}"}} {st[state]}')
    family("sluicegate_oldest_pending_age_seconds", "gauge", "Age of the oldest unexported change.")
    for st in statuses:
        if st.get("oldest_pending_age") is not None:
            task, age = _label(st["task"]), st["oldest_pending_age"]
            out.append(f'sluicegate_oldest_pending_age_seconds{{task="{task}"}} {age:.3f}')
    family("sluicegate_task_broken", "gauge", "1 when a task folder does not load.")
    for st in statuses:
        out.append(f'sluicegate_task_broken{{task="{_label(st["task"])}"}} {1 if "error" in st else 0}')
    with counters.lock:
        series = (
            ("sluicegate_exports_total", "Files published by this process.", counters.exports),
            ("sluicegate_rows_total", "Rows exported by this process.", counters.rows),
            ("sluicegate_bytes_total", "Bytes exported by this process.", counters.bytes),
            (
                "sluicegate_failures_total",
                "Failed partitions or windows in this process's runs.",
                counters.failures,
            ),
        )
        for name, text, values in series:
            family(name, "counter", text)
            for task, value in sorted(values.items()):
                out.append(f'{name}{{task="{_label(task)}"}} {value}')
        family("sluicegate_run_duration_seconds", "summary", "Run durations per task in this process.")
        for task in sorted(counters.seconds_count):
            label = _label(task)
            total, count = counters.seconds_sum[task], counters.seconds_count[task]
            out.append(f'sluicegate_run_duration_seconds_sum{{task="{label}"}} {total:.3f}')
            out.append(f'sluicegate_run_duration_seconds_count{{task="{label}"}} {count}')
    return "\n".join(out) + "\n"
