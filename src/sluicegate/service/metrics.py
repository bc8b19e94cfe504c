"""``/metrics``: Prometheus exposition through prometheus-client.

Two kinds of series, in one registry per app:

* gauges read from the ledger at scrape time (partitions by state, the oldest pending
  change, broken task folders, task-level errors, inbox sizes): a custom collector, so
  any replica answers the same;
* this process's counters (files, rows, bytes, failures, run durations per task).

With ``PROMETHEUS_MULTIPROC_DIR`` set (several worker processes behind one port), the
process counters are merged across processes by prometheus-client's multiprocess mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Summary, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

STATES = ("pending", "claimed", "exported", "failed", "waiting")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series


class LedgerCollector(Collector):
    """Gauges from ``statuses()`` (the per-task status rows), read at each scrape."""

    def __init__(self, statuses: Callable[[], Sequence[dict[str, Any]] | None]) -> None:
        self.statuses = statuses  # None: the project or the ledger could not be read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Partitions by state, the age of the oldest pending change, and broken task folders;
        ``sluicegate_ledger_up`` says whether they could be read (an alert on the others would
        otherwise fall silent while the ledger is down)."""
        read = self.statuses()
        rows = read or []
        yield GaugeMetricFamily(
            "sluicegate_ledger_up",
            "1 when the project and its ledger could be read for this scrape, else 0.",
            value=0 if read is None else 1,
        )
        parts = GaugeMetricFamily(
            "sluicegate_partitions", "Partitions by state, from the ledger.", labels=["task", "state"]
        )
        age = GaugeMetricFamily(
            "sluicegate_oldest_pending_age_seconds",
            "Age of the oldest change of a partition pending now (complete, unclaimed, not failed).",
            labels=["task"],
        )
        stale = GaugeMetricFamily(
            "sluicegate_stale_claims",
            "Claimed partitions not renewed for over half the lease: their worker stopped or died.",
            labels=["task"],
        )
        broken = GaugeMetricFamily(
            "sluicegate_task_broken", "1 when a task folder does not load.", labels=["task"]
        )
        failing = GaugeMetricFamily(
            "sluicegate_task_error",
            "1 while the task's last run failed as a whole (see status); 0 after a successful run.",
            labels=["task"],
        )
        inbox = GaugeMetricFamily(
            "sluicegate_inbox_changes",
            "Captured changes in a trigger task's inbox, not yet folded into partitions.",
            labels=["task"],
        )
        for st in rows:
            broken.add_metric([st["task"]], 1 if "error" in st else 0)
            failing.add_metric([st["task"]], 1 if st.get("task_error") else 0)
            if st.get("inbox") is not None:
                inbox.add_metric([st["task"]], st["inbox"])
            if "error" in st or st.get("kind", "partitioned") != "partitioned":
                continue
            for state in STATES:
                parts.add_metric([st["task"], state], st[state])
            if st.get("oldest_pending_age") is not None:
                age.add_metric([st["task"]], round(float(st["oldest_pending_age"]), 3))
            stale.add_metric([st["task"]], st.get("stale_claims", 0))
        yield parts
        yield age
        yield stale
        yield broken
        yield failing
        yield inbox


class Metrics:
    """This process's counters, in their own registry (tests run several apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.exports = Counter(
            "sluicegate_exports", "Files published by this process.", ["task"], registry=self.registry
        )
        self.rows = Counter(
            "sluicegate_rows", "Rows exported by this process.", ["task"], registry=self.registry
        )
        self.bytes = Counter(
            "sluicegate_bytes", "Bytes exported by this process.", ["task"], registry=self.registry
        )
        self.failures = Counter(
            "sluicegate_failures",
            "Failed units or task errors in this process's runs.",
            ["task"],
            registry=self.registry,
        )
        self.seconds = Summary(
            "sluicegate_run_duration_seconds",
            "Run durations per task in this process.",
            ["task"],
            registry=self.registry,
        )

    def record(self, summaries: Sequence[Any]) -> None:
        """Add one run's task summaries."""
        for s in summaries:
            self.exports.labels(s.task).inc(s.exported)
            self.rows.labels(s.task).inc(s.rows)
            self.bytes.labels(s.task).inc(s.bytes)
            self.failures.labels(s.task).inc(s.failed + len(s.task_errors))
            self.seconds.labels(s.task).observe(s.seconds)

    def watch(self, statuses: Callable[[], Sequence[dict[str, Any]] | None]) -> None:
        """Add the ledger gauges, read through ``statuses`` at scrape time."""
        self.ledger = LedgerCollector(statuses)
        self.registry.register(self.ledger)

    def render(self) -> bytes:
        """The exposition text of every series (process counters merged in multiprocess mode)."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]  # every process's counters, from their files
        if getattr(self, "ledger", None) is not None:
            merged.register(self.ledger)
        return generate_latest(merged)
