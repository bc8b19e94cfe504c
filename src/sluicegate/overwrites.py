"""Re-exports that could overwrite a longer window's file (incremental tasks).

A re-export (``--ignore-watermark``, ``--destination``, a redriven one) may ask for any window,
such as the first day of a four-day window exported as one file. When the path does not name
each window's start and end, that window's file may have the longer window's name: replacing it
would put the other days' rows in no file while the watermark is past them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import paths
from .exceptions import SluicegateError, UsageError
from .watermarks import Window, render_window_path, window_path

if TYPE_CHECKING:
    from .destinations import Destination
    from .drivers.incremental import Task as TaskSpec


def _names_window_exactly(task: TaskSpec, window: Window, path: str) -> bool:
    """True when no window of the entity a second, minute, ... or year longer or shorter, at either
    end, has ``path`` (one only a second apart missed a path that names the end's time but not its day)."""
    starts = [(start, window.end) for start in paths.near_times(window.start)]
    for start, end in starts + [(window.start, end) for end in paths.near_times(window.end)]:
        if start < end and render_window_path(task, window.entity, window.export_type, start, end) == path:
            return False
    return True


def exclusive(task: TaskSpec, window: Window, path: str, destination: Destination) -> str | None:
    """Why a re-export's file may not replace one that appears at ``path`` while it runs (a regular
    run's longer window, named alike), or None: a regular window, or a path naming its window exactly."""
    if window.claim is not None or _names_window_exactly(task, window, path):
        return None
    span = f"[{window.start.isoformat()}, {window.end.isoformat()})"
    return (
        f"re-exporting {window.entity} {span} did not replace {destination.display(path)}, which another"
        f" window's export wrote meanwhile (path in {task.folder / 'task.toml'} does not name each window's"
        " start and end); re-export to another folder with --destination, or add {end:%Y%m%dT%H%M%SZ} to path"
    )


def _overwrites(
    task: TaskSpec, windows: list[Window], destination_for: Callable[[str | None], Destination]
) -> Iterator[tuple[Window, str]]:
    """Each re-export window whose file is published already while the path does not name windows
    by their start and end: that file may be a longer window's, whose rows the re-export would drop."""
    for window in windows:
        if window.claim is not None:  # a regular window: the claim's own checks apply
            continue
        try:
            path = window_path(task, window)
            if _names_window_exactly(task, window, path):
                continue
            destination = destination_for(window.destination)
            published = destination.exists(path)
        except SluicegateError:  # a path or a destination that fails: recorded on the window itself
            continue
        if published:
            span = f"[{window.start.isoformat()}, {window.end.isoformat()})"
            yield (
                window,
                (
                    f"re-exporting {window.entity} {span} would overwrite {destination.display(path)}, which"
                    f" another window may have written (path in {task.folder / 'task.toml'} does not name"
                    " each window's start and end)"
                ),
            )


def refuse_overwrites(
    task: TaskSpec, windows: list[Window], destination_for: Callable[[str | None], Destination]
) -> None:
    """Refuse a re-export that could overwrite a longer window's file (see _overwrites): exit 2."""
    for _, message in _overwrites(task, windows, destination_for):
        advice = "re-export to another folder with --destination, or add {end:%Y%m%dT%H%M%SZ} to path"
        raise UsageError(f"{message}; {advice}")


def hold_overwrites(
    task: TaskSpec, windows: list[Window], destination_for: Callable[[str | None], Destination]
) -> tuple[list[Window], list[dict[str, Any]]]:
    """A redriven re-export that could overwrite a longer window's file (a regular run wrote it since
    the re-export failed) fails instead, its record kept; the other windows, and notes on those."""
    held = {id(w): message for w, message in _overwrites(task, windows, destination_for)}
    forget = f"; drop it with `sluicegate watermark forget {task.name} {{}}` and re-export to another folder"
    notes = [
        {"entity": w.entity, "rows": 0, "error": held[id(w)] + forget.format(w.entity)}
        for w in windows
        if id(w) in held
    ]
    return [w for w in windows if id(w) not in held], notes
