"""Whether a ledger is the one of the destination's earlier runs (``engine.check_ledger_found``).

A deleted SQLite ledger, or a mistyped ``[ledger] url`` or ``schema``, is a new, empty ledger:
a run on it would export everything again as new and start the change feed over. An empty
ledger over a destination that already holds a change feed is therefore refused, until
``run --new-ledger`` records that it was started there on purpose.
"""

from __future__ import annotations

from .core import Store


class FoundStore(Store):
    """Whether the ledger records anything; that it was started over existing output on purpose."""

    SQL = "found"

    def has_records(self) -> bool:
        """Whether the ledger records any claim or export, or was started on purpose (False: new)."""
        return bool(self._run("has_records").fetchone()[0])

    def mark_new_ledger(self) -> None:
        """Record that this ledger was started over existing output on purpose (run --new-ledger),
        or emptied on purpose (watermark delete of the last record)."""
        self.core.in_transaction(lambda cur: self._run("mark_new_ledger", cur))

    def destinations(self) -> dict[str, str]:
        """Each task's recorded destination: its meta key, to the destination's id and URL (masked)."""
        return {str(k): str(v) for k, v in self._run("destinations").fetchall()}

    def bind_destination(self, keys: list[str], value: str) -> None:
        """Record the destination of tasks that record none (their first run)."""
        self.core.in_transaction(
            lambda cur: [self._run("bind_destination", cur, key=k, value=value) for k in keys]
        )

    def move_destination(self, keys: list[str], value: str) -> None:
        """Record the destination of tasks, replacing the one recorded (run --move-destination)."""
        self.core.in_transaction(
            lambda cur: [self._run("move_destination", cur, key=k, value=value) for k in keys]
        )
