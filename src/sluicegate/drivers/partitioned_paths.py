"""A partition never takes the file of another partition of its task.

The path template is tried with sample values at load (``partitions.check_distinct_paths``) and a
batch's partitions against each other (``Loop._units``); :func:`not_taken` checks a batch against
the files the ledger records for the task's other partitions, and :class:`SharedFiles` checks a
commit again, with its files locked, before they are put in place: another worker may have
exported the other partition since. Keys that differ only in type (an untyped SQLite column holds
``1`` and ``'1'``) render one path: claimed in different batches (or by two processes), the second
file replaced the first and both partitions were recorded exported.

A partition parked with an old file (the path template changed) keeps it from the partition whose
path it is now ("stale") only while the file there is the one it recorded: a worker killed after
putting another partition's file there, before its commit, left that partition's bytes in its
place, and the parked one refused it the path for good, after every reexport.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..destinations import Destination
from ..exceptions import BadPartitionValue, SluicegateError
from ..ledger import ExportResult, PartitionStore
from ..ledger.claims import PathTaken
from ..partitions import file_of, restore_partition
from ..pipeline import MAX_INFLIGHT
from ..work import WorkUnit

if TYPE_CHECKING:
    from .partitioned import Task

log = logging.getLogger("sluicegate")


def shared_file(task: Task, first: str, second: str, path: str, *, stale: bool = False) -> BadPartitionValue:
    """The error of partition ``second``, which would write ``first``'s file ``path``; ``stale``:
    ``first`` recorded it under another path template (an earlier one, or another worker's during
    a rolling change of it), and is not queued to move."""
    problem = f"partitions {first} and {second} would share the file {path!r}"
    if stale:
        return BadPartitionValue(
            f"{problem}: {first} wrote it under another path template and is not queued to export again; run"
            f" 'sluicegate reexport {task.name}' to move every partition of the task to its new path"
        )
    a, b = json.loads(first), json.loads(second)
    typed = [
        (name, x, y)
        for name, x, y in zip(task.key_names, a, b, strict=False)
        if type(x) is not type(y) and str(x) == str(y)
    ]
    if typed and len(a) == len(b) and all(str(x) == str(y) for x, y in zip(a, b, strict=True)):
        name, x, y = typed[0]
        return BadPartitionValue(
            f"{problem}: their keys differ only in type ({name} {x!r} and {y!r}); make {name} one type"
            f" in {task.folder / 'select.sql'} (e.g. CAST({name} AS TEXT) AS {name}; AS CHAR on MariaDB)"
        )
    if task.time is not None and task.time.grain == "hour" and a[:-1] == b[:-1]:  # the clocks went back
        name = task.time.name  # and the zone's abbreviation (%Z) stayed, as Moscow's MSK in 2014
        return BadPartitionValue(
            f"{problem}: the two hours differ only in their UTC offset; write the offset into"
            f" {task.folder / 'task.toml'} path, such as {{{name}:%Y%m%dT%H%z}}"
        )
    return BadPartitionValue(f"{problem}; use every key whole in {task.folder / 'task.toml'} path")


def not_taken(
    store: PartitionStore,
    task: Task,
    units: Sequence[WorkUnit],
    fail: Callable[[WorkUnit, Exception], None],
    owners: dict[str, str],
    destination: Destination | None = None,
) -> list[WorkUnit]:
    """``units`` but those whose path the ledger records for another partition of ``task``, which
    fail (terminally: the other keeps its file); one ledger query for the batch. A "stale" holder
    whose file is not at the path any more (:func:`_replaced`, asked of ``destination``) keeps none.

    ``owners`` (path -> partition) holds the loop's newest files, this batch's among them (the
    claim loop refused a second partition for one of them): any file in flight, not yet recorded,
    is among the last MAX_INFLIGHT. The refused partitions leave it, and the oldest entries."""
    by_path = {u.path: u for u in units if u.path}
    refused: set[str] = set()
    for taken in store.paths_taken(task.name, set(by_path)):
        unit, path = by_path[taken.path], taken.path
        if unit.key == taken.pkey or unit.key in refused:
            continue
        if error := _refusal(task, taken, unit, destination):
            fail(unit, error)
            refused.add(unit.key)
            if owners.get(path) == unit.key:
                del owners[path]
    for path in list(itertools.islice(owners, max(0, len(owners) - MAX_INFLIGHT - len(units)))):
        del owners[path]
    return [u for u in units if u.key not in refused]


def _refusal(
    task: Task, taken: PathTaken, unit: WorkUnit, destination: Destination | None
) -> SluicegateError | None:
    """Why ``unit`` may not write the file the partition ``taken`` recorded, or None."""
    hold = _holds(task, taken.pkey, taken.zone, taken.path, taken.moving)
    try:
        if not hold or (hold == "stale" and _replaced(destination, taken, unit.key)):
            return None
    except SluicegateError as exc:  # the destination could not be asked: tried again later
        return exc
    return shared_file(task, taken.pkey, unit.key, taken.path, stale=hold == "stale")


class SharedFiles:
    """A commit's ``vet`` (``PartitionStore.commit``): with the files locked, a held claim whose file
    another partition of the task recorded since the claim was checked (another worker exported
    it meanwhile) is neither placed nor recorded; :meth:`verdicts` gives its error instead."""

    def __init__(self, task: Task, destination: Destination | None = None) -> None:
        self.task = task
        self.destination = destination  # asked whether a "stale" holder's file is still there
        self.refused: dict[int, SluicegateError] = {}

    def __call__(self, held: Sequence[ExportResult], taken: list[PathTaken]) -> list[ExportResult]:
        by_path = {r.path: r for r in held if r.path}
        removed = {r.remove for r in held if r.remove}
        held_by: dict[tuple[str, str], str] = {}  # (path, pkey) -> how that partition holds it
        for t in taken:
            path, pkey, mine = t.path, t.pkey, by_path.get(t.path)
            if (path in removed or mine is None or mine.claim.pkey != pkey) and (
                hold := _holds(self.task, pkey, t.zone, path, t.moving)
            ):
                if hold == "stale" and mine is not None and _replaced(self.destination, t, mine.claim.pkey):
                    continue  # its claim is void: the commit forgets its path (give_up)
                held_by[path, pkey] = hold
        for (path, pkey), hold in held_by.items():
            mine = by_path.get(path)
            if mine is not None and mine.claim.pkey != pkey:  # not a file to delete, nor our own
                self.refused[mine.claim.id] = shared_file(
                    self.task, pkey, mine.claim.pkey, path, stale=hold == "stale"
                )
        # A partition without rows deletes its recorded file: not one another partition holds (a
        # path template changed: that one's new file is there now), nor one another result of this
        # commit writes (on S3 its upload may have landed already, before the deletion).
        return [
            dataclasses.replace(r, remove=None)
            if any(path == r.remove and pkey != r.claim.pkey for path, pkey in held_by)
            or (r.remove in by_path and by_path[r.remove].claim.pkey != r.claim.pkey)
            else r
            for r in held
            if r.claim.id not in self.refused
        ]

    def verdicts(self, ids: Sequence[int], done: Sequence[bool]) -> list[bool | SluicegateError]:
        """Per claim id: whether it was recorded, or the error that refused its file."""
        return [self.refused.get(i, ok) for i, ok in zip(ids, done, strict=True)]


def _replaced(destination: Destination | None, taken: PathTaken, writer: str) -> bool:
    """Whether the file at ``taken.path`` is not the one its holder recorded (missing, or other
    bytes: a worker killed after putting ``writer``'s file there, before its commit): the holder's
    claim to the path is then void. Asked only of a "stale" holder, never on a plain commit; with
    nothing recorded to tell the file by (or no ``destination``), the holder keeps it."""
    if destination is None or (taken.checksum is None and taken.etag is None):
        return False
    if destination.exists(taken.path, taken.nbytes, taken.etag, taken.checksum):
        return False
    log.warning(
        "partition %s recorded %s, and another file is there now (or none): partition %s takes the path",
        taken.pkey, destination.display(taken.path), writer,
    )  # fmt: skip
    return True


def _holds(task: Task, pkey: str, zone: str | None, path: str, moving: bool) -> str | None:
    """Whether the partition ``pkey`` (cut in ``zone``) that recorded ``path`` keeps it from another
    partition: "clash" when it would write it again, or cannot be exported again (its file is its
    last one); "stale" when it would write another file now (the path template changed) but is not
    queued to (its file is its live export until then); None when it gives it up: queued to write
    another file (a key swap's partitions take each other's files), or an hour retired by a zone
    change whose file the hour of the same wall clock takes over (``partitions.superseded``)."""
    values = json.loads(pkey)
    if task.time is not None and zone is None:
        return "clash"  # not a partition of the task as it is now: its file is its last one
    try:
        part = restore_partition(task, values, zone)
        _, new, previous = file_of(task, values, part, types.SimpleNamespace(prev_path=path, attempts=0))
    except (SluicegateError, KeyError, TypeError, ValueError):
        return "clash"  # it cannot be restored (or exported) again: its file is its last one
    if new == path:
        return "clash"
    if not new and previous is None:  # a retired hour: it neither writes nor deletes the file
        return None
    return None if moving else "stale"
