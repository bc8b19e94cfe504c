"""The recorder of incremental runs: a window's watermark moves (or a redriven re-export's failure
is cleared) only after its file is durably in place; a failed window is recorded for redrive."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from .. import watermarks
from ..exceptions import SluicegateError
from ..ledger import WatermarkStore
from ..options import TaskSummary
from ..watermarks import Window
from ..work import Outcome, Place, WorkUnit

if TYPE_CHECKING:
    from .incremental import Task


class Recorder:
    """Watermarks move (or a redriven re-export's failure is cleared) after durable publishing."""

    def __init__(self, task: Task, store: WatermarkStore, lease: float, summary: TaskSummary) -> None:
        self.task = task
        self.store = store
        self.lease = lease
        self.summary = summary

    def commit(self, outcomes: Sequence[Outcome], place: Place) -> list[bool]:
        """Put the files in place, then advance each window's watermark, fenced by its claim.

        A window's file has its window in its name and the window is closed (the end is capped
        below the oldest open transaction), so two exporters of one window write the same rows:
        the files are placed before the claims are checked (a window is written only once stored
        pending under a claim still held, see _unit). Re-exports move nothing."""
        place(outcomes)
        out = []
        for outcome in outcomes:
            window: Window = outcome.unit.handle
            if outcome.staged is not None and outcome.staged.refused:  # not placed: the pipeline fails it
                out.append(False)
                continue
            if window.claim is not None:
                done = self.store.commit(window.claim, end=window.end, rows=outcome.rows, path=outcome.path)
            else:
                if window.mode == "redrive":
                    self.store.clear_reexport(self.task.name, window)
                done = True
            out.append(done)
            self._entry(window, rows=outcome.rows, file=outcome.path, ok=done)
        return out

    def fail(self, unit: WorkUnit, error: SluicegateError) -> None:
        """Record the failed window for redrive; the watermark does not move."""
        window: Window = unit.handle
        recorded = self.store.fail(
            self.task.name,
            window.entity,
            token=window.claim.token if window.claim else None,
            error=str(error),
            start=window.start,
            end=window.end,
            export_type=window.export_type,
            mode="watermark" if window.claim else "reexport",
            destination=window.destination,
        )
        note = "" if recorded else watermarks.not_recorded(self.task.name, window.entity)
        self._entry(window, rows=0, file=None, ok=False, error=str(error) + note)

    def renew(self, tokens: Collection[str]) -> None:
        """Extend the watermark claims of a long export."""
        for token in tokens:
            self.store.renew(token, lease=self.lease)

    def release(self, tokens: Collection[str]) -> int:
        """Give back unfinished watermark claims."""
        return sum(self.store.release(token) for token in tokens)

    def _entry(
        self, window: Window, *, rows: int, file: str | None, ok: bool, error: str | None = None
    ) -> None:
        self.summary.entities.append(
            {
                "entity": window.entity,
                "start": window.start.isoformat(),
                "end": window.end.isoformat(),
                "type": window.export_type,
                "rows": rows,
                "file": file,
                "watermark_moved": bool(ok and window.claim is not None),
                **({"error": error} if error else {}),
            }
        )
