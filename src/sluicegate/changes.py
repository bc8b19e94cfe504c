"""The change feed: a manifest per commit group, so consumers sync what changed without listing.

Every group of files a pipeline puts in place (see :meth:`Pipeline._place
<sluicegate.pipeline.Pipeline>`) is followed, before its ledger commit, by one manifest::

    _manifests/YYYY/MM/DD/<run-id>-<seq>.jsonl

one JSON line per file published or deleted by that group: ``path``, ``action``
(``published`` or ``deleted``), ``rows``, ``bytes``, ``sha256``, ``keys`` (the partition
keys, the entity, the block), ``version``, ``task``, ``time`` (UTC, when the manifest was
written), ``run`` and ``seq`` (its name). Files left unchanged (same bytes) are not listed.

The manifest is written through the destination like any file (staged, published, synced:
a temp file renamed into place, or one ``PUT``), so a reader sees all of it or none of it,
and only after the files it names are in place. The ledger commit follows it, inside the
same transaction that holds the claims; so:

* a file recorded as exported is always in a manifest (its manifest is durable first);
* a manifest never names a file that was not in place when it was written;
* a crash (or a lost connection) after the manifest and before the commit leaves the
  claim uncommitted: the unit is exported again and its file appears in a second manifest.
  The feed is at-least-once; consumers dedupe on ``(path, sha256, version)``. Files stay
  exactly-once.

:func:`read_changes` reads manifests back (``sluicegate changes``): the latest entry per
file among the manifests after a time or after a run.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .exceptions import ConfigError, PermissionDenied, TerminalError, UsageError

if TYPE_CHECKING:
    from .destinations import Destination
    from .specs import Project
    from .work import Outcome

MANIFESTS = "_manifests"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_NAME = re.compile(r"^(?P<run>[0-9a-f]{32})-(?P<seq>\d+)\.jsonl$")
_POSITION = re.compile(r"^(?P<run>[0-9a-f]{32})-(?P<seq>\d+)$")


@dataclass(frozen=True, kw_only=True)
class Change:
    """One file's line in a manifest."""

    path: str
    action: str  # "published" or "deleted"
    rows: int
    bytes: int
    sha256: str | None
    keys: dict[str, Any] = field(default_factory=dict)
    version: Any = None
    task: str
    time: str  # ISO 8601, UTC, microseconds: when the manifest was written
    run: str
    seq: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Change:
        """A line as written by :class:`ChangeFeed`; TypeError for a field of another type (a
        hand-edited manifest's "seq": "1" failed the sort of every entry with a traceback; a line
        that is no object, "keys" no object or "sha256" no text, the listing or its --json)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a line is {data!r}, not an object")
        texts, numbers = ("path", "action", "task", "time", "run"), ("rows", "bytes", "seq")
        wrong = [(k, "a text") for k in texts if not isinstance(data.get(k), str)]
        wrong += [
            (k, "a whole number")
            for k in numbers
            if isinstance(data.get(k), bool) or not isinstance(data.get(k), int)
        ]
        if not isinstance(data.get("keys", {}), dict):
            wrong.append(("keys", "an object"))
        if not isinstance(data.get("sha256"), str | None):
            wrong.append(("sha256", "a text or null"))
        if wrong:
            name, kind = wrong[0]
            raise TypeError(f"field {name!r} is {data.get(name)!r}, not {kind}")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def as_json(self) -> dict[str, Any]:
        """The line's fields, for JSON (a shallow copy: asdict's deep copy cost more than the
        rest of a manifest line)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__} | {"keys": dict(self.keys)}


REGION = 2**32  # the numbers of one lane: each helper's lane starts at a region of its own


@dataclass(kw_only=True)
class FeedRun:
    """One run's manifest names: a run id and a counter shared by its pipelines and threads.

    The counter gives ``start``, ``start + 1``, ...; :meth:`split` hands each helper process a
    lane of its own, numbered from a fresh multiple of REGION (2^32 manifests a lane), so every
    manifest of the run gets its own number. Lanes split in this process share its count of
    regions; a helper's lane is never split (helpers start no helpers).
    """

    run: str = field(default_factory=lambda: uuid.uuid4().hex)
    start: int = 1
    _seq: Iterator[int] = field(init=False)
    _regions: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._seq = itertools.count(self.start)

    def next_seq(self) -> int:
        """The next manifest number of this run."""
        with self._lock:
            return next(self._seq)

    def split(self, lanes: int) -> list[FeedRun]:
        """Keep counting here; return ``lanes - 1`` lanes for helpers, each in a region of its own.
        (Interleaved lanes multiplied the step at each split: a pass whose tasks started helpers
        one after another numbered its manifests past 2^53, then past a 255-byte name.)"""
        with self._lock:
            regions = [next(self._regions) for _ in range(1, lanes)]
        return [FeedRun(run=self.run, start=r * REGION + 1, _regions=self._regions) for r in regions]


class ChangeFeed:
    """Writes one manifest per placed group of a task's files to a destination."""

    def __init__(self, destination: Destination, *, task: str, run: FeedRun) -> None:
        self.destination = destination
        self.task = task
        self.run = run

    def write(self, outcomes: Sequence[Outcome]) -> str | None:
        """Publish the manifest of ``outcomes`` (in place, durably); return its path, or None.

        Call it after the outcomes' files are in place and before they are recorded. Outcomes
        that changed no file (unchanged bytes, no rows and no previous file) are left out; a
        group without changes writes no manifest. Raises DestinationUnavailable (transient)
        when the manifest cannot be written: the caller's commit must then fail.
        """
        if not any(o.remove or (o.path is not None and o.published) for o in outcomes):
            return None
        return self._manifest(lambda stamp: [line for o in outcomes for line in _lines(o, stamp)])

    def deleted(self, path: str, *, keys: Mapping[str, Any]) -> str | None:
        """Publish the manifest of one file deleted outside an outcome (a blocks task's later
        stage, whose rows a re-run found gone); as :meth:`write`, before the deletion's commit."""
        line = {"path": path, "action": "deleted", "rows": 0, "bytes": 0, "sha256": None, "keys": dict(keys)}
        return self._manifest(lambda stamp: [line | {"version": None, **stamp}])

    def _manifest(self, lines: Callable[[dict[str, Any]], list[dict[str, Any]]]) -> str:
        now = dt.datetime.now(dt.UTC)
        seq = self.run.next_seq()
        stamp = {
            "task": self.task,
            "time": now.isoformat(timespec="microseconds"),
            "run": self.run.run,
            "seq": seq,
        }
        path = f"{MANIFESTS}/{now:%Y/%m/%d}/{self.run.run}-{seq:06d}.jsonl"
        body = "".join(_LINE.encode(line) + "\n" for line in lines(stamp))
        staged = self.destination.stage(path)
        try:
            staged.file.write(body.encode())
            self.destination.publish(staged)
            self.destination.sync([staged])
        except BaseException:
            self.destination.discard(staged)
            raise
        return path


# A manifest line's JSON: one encoder for all (json.dumps with options builds one per call).
_LINE = json.JSONEncoder(default=str, sort_keys=True)


def _lines(outcome: Outcome, stamp: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest lines (the fields of :class:`Change`) of one outcome: a deletion, a
    published file, both or none. ``stamp``: the manifest's task, time, run and seq."""
    unit = outcome.unit
    keys = dict(unit.keys) if unit.keys is not None else ({"unit": unit.key} if unit.key else {})
    common = {"keys": keys, "version": unit.version, **stamp}
    found = []
    if outcome.remove:
        found.append(
            {"path": outcome.remove, "action": "deleted", "rows": 0, "bytes": 0, "sha256": None, **common}
        )
    if outcome.path is not None and outcome.published:
        found.append(
            {
                "path": outcome.path,
                "action": "published",
                "rows": outcome.rows,
                "bytes": outcome.nbytes,
                "sha256": outcome.checksum,
                **common,
            }
        )
    return found


Since = dt.datetime | str | tuple[str, int]  # a time, a run id, or a manifest's (run, seq)


def parse_since(text: str) -> Since:
    """``--since``: an ISO 8601 time (UTC when it has no offset), a run id (32 hex digits), or
    the position of a manifest, ``<run-id>-<seq>`` (its name; an entry's ``run`` and ``seq``)."""
    value = text.strip()
    position = _POSITION.match(value.lower())
    if position:
        return position["run"], int(position["seq"])
    run = value.lower().replace("-", "")
    if _RUN_ID.match(run):
        return run
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"--since {text!r} is neither a time (such as 2024-05-01T00:00:00Z) nor a run id "
            "(the 32 hex digits of a manifest name, _manifests/YYYY/MM/DD/<run-id>-<seq>.jsonl) "
            "nor a manifest's <run-id>-<seq>"
        ) from None
    try:
        return parsed.astimezone(dt.UTC) if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    except OverflowError:  # year 1 or 9999 with an offset that takes it past them
        raise UsageError(
            f"--since {text!r} is outside the years 1 to 9999 in UTC; give a later (or earlier) time"
        ) from None


def read_changes(destination: Destination, *, since: Since, task: str | None = None) -> list[Change]:
    """The latest entry per file among the manifests after ``since``, oldest first.

    ``since`` is a time (entries written after it), a run id (entries of other runs written
    after that run's last manifest) or a manifest's ``(run, seq)``: the entries of every
    manifest after that one, in the order of (``time``, ``run``, ``seq``), so a consumer that
    remembers the ``run`` and ``seq`` of the last entry it saw gets each later entry once,
    whichever runs, lanes or workers wrote them. ``time`` is the clock of the worker that wrote
    the manifest: one that appears after a later-stamped one was read (processes writing at
    once, clocks apart) is missed by a position; then ask with a time and an overlap (a few
    minutes before the last time you saw) and skip what you have, by ``(path, sha256, version)``.
    """
    point, after = _start(destination, since)
    # Zero-padded by hand: strftime writes year 999 as "999", which sorts after "2026". The day's
    # folder with its "/": SeaweedFS skips the whole folder a StartAfter names without it.
    start = f"{MANIFESTS}/{point.year:04d}/{point.month:02d}/{point.day:02d}/"
    latest: dict[str, Change] = {}
    found = [
        c
        for name in destination.list_files(f"{MANIFESTS}/", start_after=start)
        if _run_of(name) is not None
        for c in _read(destination, name)
        if after(c) and (task is None or c.task == task)
    ]
    for change in sorted(found, key=lambda c: (c.time, c.run, c.seq)):
        latest.pop(change.path, None)  # re-inserted: the dict keeps the order of the latest entries
        latest[change.path] = change
    return list(latest.values())


def _start(destination: Destination, since: Since) -> tuple[dt.datetime, Callable[[Change], bool]]:
    """The time ``since`` starts at, and whether an entry comes after it."""
    if isinstance(since, dt.datetime):
        point = since.astimezone(dt.UTC)
        return point, lambda c: dt.datetime.fromisoformat(c.time) > point
    run, seq = (since, None) if isinstance(since, str) else since
    shown = run if seq is None else f"{run}-{seq}"
    names = [n for n in destination.list_files(f"{MANIFESTS}/") if _of(n, run, seq)]
    what = "that run" if seq is None else "that name"
    if not names:
        raise UsageError(
            f"--since {shown}: no manifest of {what} under {destination.display(MANIFESTS)}; "
            "give a run id, or the run and seq of an entry, from 'sluicegate changes --json', or a time"
        )
    times = [dt.datetime.fromisoformat(c.time) for n in names for c in _read(destination, n)]
    if not times:  # its manifests were emptied by hand: max() of nothing was a traceback
        raise UsageError(
            f"--since {shown}: the manifests of {what} under {destination.display(MANIFESTS)} hold"
            " no entries; give a time instead"
        )
    point = max(times)
    if seq is None:
        return point, lambda c: c.run != run and dt.datetime.fromisoformat(c.time) > point
    return point, lambda c: (dt.datetime.fromisoformat(c.time), c.run, c.seq) > (point, run, seq)


def is_manifest(name: str) -> bool:
    """Whether a file listed under ``_manifests/`` is named as sluicegate names its manifests
    (another tool's files there are not; the reader skips them too)."""
    return _run_of(name) is not None


def _run_of(name: str) -> str | None:
    match = _NAME.match(name.rsplit("/", 1)[-1])
    return match["run"] if match else None


def _of(name: str, run: str, seq: int | None) -> bool:
    """Whether ``name`` is a manifest of ``run`` (numbered ``seq``, when given)."""
    match = _NAME.match(name.rsplit("/", 1)[-1])
    return match is not None and match["run"] == run and (seq is None or int(match["seq"]) == seq)


def _read(destination: Destination, name: str) -> list[Change]:
    """A manifest's entries; one that is not UTF-8 JSON lines with an aware ISO ``time``, each
    ending in a newline, is refused, and so is one deleted since it was listed."""
    try:
        data = destination.read(name)
    except PermissionDenied:
        raise
    except TerminalError:  # "does not exist; run the stage that writes it" spoke of blocks
        if destination.exists(name):
            raise
        raise TerminalError(
            f"{destination.display(name)} was deleted while 'sluicegate changes' was reading the feed"
            " (by hand, or by an expiry rule on _manifests/); run the command again"
        ) from None
    try:
        text = data.decode()
        if text and not text.endswith("\n"):  # every line is written with its newline
            raise ValueError("its last line has no end")
        changes = [Change.from_json(json.loads(line)) for line in text.splitlines() if line.strip()]
        for change in changes:
            if dt.datetime.fromisoformat(change.time).utcoffset() is None:
                raise ValueError(f"time {change.time!r} has no UTC offset")
    except (ValueError, TypeError, KeyError) as exc:  # UnicodeDecodeError is a ValueError
        raise TerminalError(
            f"{destination.display(name)} is damaged (cut short or edited since it was written:"
            f" {exc}); restore it from a copy, or move it out of _manifests/ and 'sluicegate"
            " reexport' the files it named"
        ) from None
    return changes


def list_changes(project: Project, *, since: str, task: str | None = None) -> list[Change]:
    """``sluicegate changes``: the latest entry per file changed after ``since`` (a time or run id).

    Raises UsageError for a ``since`` that is neither, ConfigError for an unknown task or when
    the project writes no manifests.
    """
    from .destinations import open_destination

    point = parse_since(since)
    if task is not None:
        project.task(task)  # an unknown name is a ConfigError naming the tasks folder
    settings = project.settings.destination
    toml = project.settings.root / "sluicegate.toml"
    if not settings.manifests and not toml.is_file():  # a DSL_PATH folder served without one
        raise ConfigError(
            "no manifests are written for a DSL_PATH folder without sluicegate.toml; set "
            "SLUICEGATE_DESTINATION__MANIFESTS=true to record changes from the next run"
        )
    if not settings.manifests:
        raise ConfigError(
            f"{toml} [destination] manifests is false, so no "
            "manifests are written; set it to true (the default) to record changes from the next run"
        )
    return read_changes(open_destination(settings), since=point, task=task)
