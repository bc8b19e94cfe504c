"""The partitions ledger against a model (issue 12, item 6).

A Hypothesis state machine drives the real :class:`~sluicegate.ledger.PartitionStore` on
SQLite and PostgreSQL (two connections, as two workers) through marks, claims, renewals,
lease expiry, the clock moving on, commits with current and stale tokens, a commit whose
files fail to go in place, a commit whose connection dies after placing (PostgreSQL),
failures with and without backoff, releases, resets and re-exports. Beside it, a few lines of plain Python say what each step should do. After
every step the ledger's rows, ``status`` and ``pending`` must agree with the model, and:

* a claim never takes a partition another claim holds under a live lease;
* ``exported_version`` never exceeds ``version``, and neither ever moves backwards;
* a commit or failure under a stale token changes nothing;
* pending, claimed, exported, failed, waiting and retrying counts agree with the model.

Time is virtual: the clock "moves on" by shifting every stored time of the task back
(``advance``). Every virtual duration is a multiple of a minute and the real clock runs
ahead of the virtual one by the time the example has taken (well under a minute), so a
deadline that falls exactly on the virtual ``now`` has passed: the model compares with ``<=``.
Each example uses a task of its own in one ledger, so examples do not see each other.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sluicegate import db
from sluicegate.ledger import Claim, ExportResult, Ledger
from sluicegate.ledger.core import pg_array
from sluicegate.partitions import Partition
from sluicegate.specs import TimeSpec

UTC = dt.UTC
MINUTE = 60
SETTLE = MINUTE
LEASE = 10 * MINUTE
BACKOFF = MINUTE
MAX_ATTEMPTS = 3
# Virtual end of each partition's window (None: no time key). Some are complete from the
# start, some wait for the clock to move on past their end plus SETTLE.
WINDOW_ENDS: tuple[int | None, ...] = (None, -1440 * MINUTE, 0, 2 * MINUTE, 10 * MINUTE, 60 * MINUTE)
KEYS = range(len(WINDOW_ENDS))
DAY_KEY = TimeSpec(column="t", settle=SETTLE)
STEPS = itertools.count()
# Deterministic for CI: a fixed sequence of examples, no example database, no deadline.
MODEL_SETTINGS = settings(
    max_examples=120,
    stateful_step_count=50,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclasses.dataclass(frozen=True)
class ModelTask:
    """The little of a partitioned task the partitions store reads (``PartitionKeys``)."""

    name: str
    keys: tuple[str, ...] = ("k",)
    time: TimeSpec | None = DAY_KEY
    path: str = "{k}.csv"
    format: str = "csv"

    @property
    def key_names(self) -> tuple[str, ...]:
        return self.keys


@dataclasses.dataclass
class Row:
    """What the model expects of one ledger row; times are virtual seconds."""

    version: int = 1
    exported: int = 0
    token: str | None = None
    claimed_version: int | None = None
    lease_until: int | None = None
    attempts: int = 0
    failed: bool = False
    next_attempt_at: int | None = None
    forced: bool = False
    path: str | None = None
    changed: int = 0  # the step whose change made it pending: claims take the oldest first
    # Its claim's kind: "lone" (it held it alone from the start: a claim of one, a take-over
    # alone), "second" (a dead batch's second chance: a take-over of several), or "batch".
    kind: str = "batch"


class Model:
    """The partitions of one task as the ledger should hold them, at virtual time ``now``."""

    def __init__(self) -> None:
        self.rows: dict[int, Row] = {}
        self.now = 0

    def complete(self, key: int) -> bool:
        end = WINDOW_ENDS[key]
        return end is None or end + SETTLE <= self.now

    def live(self, row: Row) -> bool:
        return row.token is not None and row.lease_until is not None and row.lease_until > self.now

    def unheld(self, row: Row) -> bool:
        return not row.failed and row.version > row.exported and not self.live(row)

    def claimable(
        self, *, dead: bool = False, kinds: tuple[str, ...] = ("lone", "second", "batch")
    ) -> set[int]:
        """Pending partitions no claim holds, or with ``dead`` those of dead claims (expired leases)
        of ``kinds``."""
        return {
            k
            for k, r in self.rows.items()
            if self.unheld(r)
            and (r.token is not None) == dead
            and (not dead or r.kind in kinds)
            and self.complete(k)
            and (r.next_attempt_at is None or r.next_attempt_at <= self.now)
        }

    def status(self) -> tuple[int, ...]:
        """Pending, claimed, exported, failed, waiting, retrying (as ``TaskStatus``)."""
        rows = self.rows.items()
        return (
            sum(self.unheld(r) and self.complete(k) for k, r in rows),
            sum(not r.failed and self.live(r) for _, r in rows),
            sum(not r.failed and r.version == r.exported for _, r in rows),
            sum(r.failed for _, r in rows),
            sum(self.unheld(r) and not self.complete(k) for k, r in rows),
            sum(not r.failed and r.version > r.exported and r.attempts > 0 for _, r in rows),
        )

    def change(self, key: int, step: int, *, forced: bool) -> None:
        """A mark (``forced=False``) or a re-export of ``key``."""
        row = self.rows.get(key)
        if row is None:
            self.rows[key] = Row(changed=step)
            return
        if row.version == row.exported:
            row.changed = step
        row.version += 1
        if forced or row.failed:
            row.attempts, row.next_attempt_at = 0, None
        row.failed = False
        row.forced = row.forced or forced

    def give_back(self, row: Row) -> None:
        row.token = row.claimed_version = row.lease_until = None


class LedgerMachine(RuleBasedStateMachine):
    """Drives the real partitions store beside :class:`Model`; set ``ledgers`` before running."""

    ledgers: Sequence[Ledger] = ()
    claims = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        self.task = ModelTask(name=f"model-{next(STEPS)}")
        self.model = Model()
        self.shifted = 0  # seconds every stored time has been moved back
        self.origin = time.time()
        self.step = 0
        self.seen: dict[int, tuple[int, int]] = {}  # key -> (version, exported_version) last seen
        self.latest: dict[int, Claim] = {}  # key -> the last claim that took it

    # ------------------------------------------------------------------ helpers

    @property
    def ledger(self) -> Ledger:
        return self.ledgers[0]

    def _sql(self, sqlite: str, postgresql: str, params: dict[str, Any]) -> None:
        pg = self.ledger.dialect is db.POSTGRESQL
        table = self.ledger.table_prefix + "partitions"
        statement = (postgresql if pg else sqlite).format(t=table)
        self.ledger.conn.execute(statement, {**params, "task": self.task.name})

    def _partition(self, key: int) -> Partition:
        end = WINDOW_ENDS[key]
        if end is None:
            return Partition(task=self.task.name, values=(key,))
        # The real instant that is virtual `end` now that stored times have moved back by `shifted`.
        real_end = dt.datetime.fromtimestamp(self.origin + end - self.shifted, UTC)
        return Partition(task=self.task.name, values=(key,), zone="UTC", start=real_end - dt.timedelta(days=1),
                         end=real_end)  # fmt: skip

    def _key(self, claim: Claim) -> int:
        return int(claim.keys["k"])

    def _tick(self) -> int:
        self.step += 1
        return self.step

    # ------------------------------------------------------------------ rules

    @initialize(keys=st.sets(st.sampled_from(KEYS), min_size=1), worker=st.sampled_from([0, 1]))
    def first_marks(self, keys: set[int], worker: int) -> None:
        """Every example starts with some partitions changed."""
        self.mark(keys, worker)

    @rule(
        keys=st.sets(st.sampled_from(KEYS), min_size=1), worker=st.sampled_from([0, 1]), forced=st.booleans()
    )
    def mark(self, keys: set[int], worker: int, forced: bool = False) -> None:
        """A change to some partitions (new ones are inserted), or ``forced``: ``sluicegate reexport``,
        which queues known partitions again even if unchanged."""
        step = self._tick()
        store = self.ledgers[worker].partitions
        if forced:
            keys &= set(self.model.rows)
            assert store.reexport(self.task, lambda k, _s, _e: k["k"] in keys) == len(keys)
        else:
            assert store.mark([self._partition(k) for k in keys], self.task) == len(keys)
        for k in keys:
            self.model.change(k, step, forced=forced)

    @precondition(lambda self: self.model.rows)
    @rule(target=claims, limit=st.integers(1, len(KEYS)), worker=st.sampled_from([0, 1]))
    def claim(self, limit: int, worker: int) -> Any:
        """A worker claims up to ``limit`` partitions: only unclaimed, complete, due ones, oldest change first."""
        self._tick()
        got = self.ledgers[worker].partitions.claim(self.task, limit=limit, lease=LEASE)
        keys = [self._key(c) for c in got]
        claimable = self.model.claimable()
        assert len(set(keys)) == len(keys), f"a claim took a partition twice: {keys}"
        assert set(keys) <= claimable, (
            f"claimed {set(keys) - claimable}, which another claim holds or is not due"
        )
        assert len(keys) == min(limit, len(claimable)), f"claimed {keys} of {sorted(claimable)}"
        left = claimable - set(keys)
        if keys and left:
            assert max(self.model.rows[k].changed for k in keys) <= min(
                self.model.rows[k].changed for k in left
            )
        for c in got:
            self.latest[self._key(c)] = c
            row = self.model.rows[self._key(c)]
            row.token, row.claimed_version, row.lease_until = c.token, row.version, self.model.now + LEASE
            row.kind = "lone" if len(got) == 1 else "batch"
            assert (c.version, c.exported_version, c.attempts, c.forced) == (
                row.version, row.exported, row.attempts, row.forced,
            )  # fmt: skip
        return multiple(*got)

    @precondition(lambda self: self.model.rows)
    @rule(target=claims, worker=st.sampled_from([0, 1]))
    def take_over(self, worker: int) -> Any:
        """A worker takes over one partition of a dead claim that held it alone, or of a dead second
        chance, the oldest change first, alone: an attempt only when the dead claim held it alone
        from the start (not a dead batch's second chance)."""
        self._tick()
        got = self.ledgers[worker].partitions.take_over(self.task, lease=LEASE)
        dead = self.model.claimable(dead=True, kinds=("lone", "second"))
        assert len(got) == min(1, len(dead)), f"took over {got} of {sorted(dead)}"
        return self._taken_over(got, dead, "lone")

    @precondition(lambda self: self.model.rows)
    @rule(target=claims, limit=st.integers(1, len(KEYS)), worker=st.sampled_from([0, 1]))
    def take_over_dead_batches(self, limit: int, worker: int) -> Any:
        """A worker takes over up to ``limit`` partitions of dead batches together, oldest change
        first, under one token, uncounted: their second chance (a lone token when it found one)."""
        self._tick()
        got = self.ledgers[worker].partitions.take_over(self.task, lease=LEASE, batch=limit)
        dead = self.model.claimable(dead=True, kinds=("batch",))
        assert len(got) == min(limit, len(dead)), f"took over {got} of {sorted(dead)}"
        assert len({c.token for c in got}) <= 1
        return self._taken_over(got, dead, "lone" if len(got) == 1 else "second")

    def _taken_over(self, got: list[Claim], dead: set[int], kind: str) -> Any:
        keys = [self._key(c) for c in got]
        left = dead - set(keys)
        assert set(keys) <= dead and len(set(keys)) == len(keys), f"took over {keys} of {sorted(dead)}"
        if keys and left:
            assert max(self.model.rows[k].changed for k in keys) <= min(
                self.model.rows[k].changed for k in left
            )
        for c in got:
            key = self._key(c)
            self.latest[key] = c
            row = self.model.rows[key]
            row.attempts += row.kind == "lone"
            row.token, row.claimed_version, row.lease_until = c.token, row.version, self.model.now + LEASE
            row.kind = kind
            assert (c.version, c.exported_version, c.attempts, c.forced) == (
                row.version, row.exported, row.attempts, row.forced,
            )  # fmt: skip
        return multiple(*got)

    @rule(claim=claims)
    def renew(self, claim: Claim) -> None:
        """A heartbeat: extends every lease still under the token, even one run out but not taken over."""
        self._tick()
        held = [r for r in self.model.rows.values() if r.token == claim.token]
        assert self.ledger.partitions.renew(claim.token, lease=LEASE) == len(held)
        for r in held:
            r.lease_until = self.model.now + LEASE

    @rule(claim=claims)
    def release(self, claim: Claim) -> None:
        """A worker gives back what it still holds under a token."""
        self._tick()
        held = [r for r in self.model.rows.values() if r.token == claim.token]
        assert self.ledger.partitions.release(claim.token) == len(held)
        for r in held:
            self.model.give_back(r)

    @rule(claim=claims)
    def expire(self, claim: Claim) -> None:
        """The lease of one claimed partition runs out (set a minute in the past through SQL)."""
        self._tick()
        self._sql(
            "UPDATE {t} SET lease_until = :now - 60 WHERE task = :task AND pkey = :pkey AND claim_token IS NOT NULL",
            "UPDATE {t} SET lease_until = now() - interval '1 minute'"
            " WHERE task = %(task)s AND pkey = %(pkey)s AND claim_token IS NOT NULL",
            {"now": time.time(), "pkey": claim.pkey},
        )
        row = self.model.rows[self._key(claim)]
        if row.token is not None:
            row.lease_until = self.model.now - MINUTE

    @precondition(lambda self: self.model.rows)
    @rule(minutes=st.sampled_from([1, 5, 10, 60]))
    def advance(self, minutes: int) -> None:
        """The clock moves on: every stored time of the task moves back by ``minutes``."""
        self._tick()
        seconds = minutes * MINUTE
        columns = ("changed_at", "lease_until", "next_attempt_at", "win_start", "win_end", "exported_at")
        self._sql(
            "UPDATE {t} SET " + ", ".join(f"{c} = {c} - :d" for c in columns) + " WHERE task = :task",
            "UPDATE {t} SET " + ", ".join(f"{c} = {c} - make_interval(secs => %(d)s)" for c in columns)
            + " WHERE task = %(task)s",
            {"d": seconds},
        )  # fmt: skip
        self.shifted += seconds
        self.model.now += seconds

    @rule(
        batch=st.lists(claims, min_size=1, max_size=4, unique_by=lambda c: c.id),
        how=st.sampled_from(["as drawn", "with the held", "place fails"]),
    )
    def commit(self, batch: list[Claim], how: str) -> None:
        """Commit a batch of results, current and stale, as drawn or with every claim still held
        added; or the files fail to go in place."""
        if how == "with the held":
            ids = {c.id for c in batch}
            batch = batch + [c for c in self.latest.values() if c.id not in ids]
        self._commit(batch, "place fails" if how == "place fails" else None)

    @precondition(lambda self: self.ledger.dialect is db.POSTGRESQL)
    @rule(batch=st.lists(claims, min_size=1, max_size=4, unique_by=lambda c: c.id))
    def commit_connection_lost(self, batch: list[Claim]) -> None:
        """PostgreSQL: the ledger connection dies once the files are in place. The commit is
        tried again on a new connection, without placing the files again."""
        self._commit(batch, "connection lost")

    def _commit(self, batch: list[Claim], fault: str | None) -> None:
        self._tick()
        results = [
            ExportResult(claim=c, path=f"{c.token}/{c.pkey}", rows=1, nbytes=1, checksum="c", published=True)
            for c in batch
        ]
        held = {c.id for c in batch if self.model.rows[self._key(c)].token == c.token}
        placed: list[int] = []
        pid = self.ledger.conn.info.backend_pid if fault == "connection lost" else None

        def place(chosen: Sequence[ExportResult]) -> Sequence[ExportResult]:
            placed.extend(r.claim.id for r in chosen)
            if fault == "place fails":
                raise PlaceFailed
            if pid is not None and len(placed) == len(chosen):  # once, from the other connection
                kill = "SELECT pg_terminate_backend(%s, 10000)"  # waits until the backend is gone
                assert self.ledgers[1].conn.execute(kill, (pid,)).fetchone()[0]
            return chosen

        if fault == "place fails" and held:
            with pytest.raises(PlaceFailed):
                self.ledger.partitions.commit(results, place)
        else:
            assert self.ledger.partitions.commit(results, place) == [c.id in held for c in batch]
        assert sorted(placed) == sorted(held), "files of stale claims were put in place, or of held ones not"
        if fault == "place fails":
            return
        if pid is not None and held:
            assert self.ledger.conn.info.backend_pid != pid, "the connection was not lost"
        for c, r in zip(batch, results, strict=True):
            row = self.model.rows[self._key(c)]
            if c.id not in held:
                continue  # a stale token commits nothing: the invariants compare the whole row
            assert row.claimed_version is not None
            row.exported, row.path = row.claimed_version, r.path
            row.forced = row.forced and row.version > row.claimed_version
            row.attempts, row.next_attempt_at = 0, None
            self.model.give_back(row)

    @rule(claim=claims, terminal=st.booleans(), backoff=st.sampled_from([0, BACKOFF]))
    def fail(self, claim: Claim, terminal: bool, backoff: int) -> None:
        """An export fails: retried after backoff, or parked when terminal or out of attempts."""
        self._tick()
        row = self.model.rows[self._key(claim)]
        ours = row.token == claim.token
        assert (
            self.ledger.partitions.fail(
                claim, error="boom", terminal=terminal, max_attempts=MAX_ATTEMPTS, backoff=backoff
            )
            == ours
        )
        if ours:
            row.next_attempt_at = self.model.now + min(backoff * 2**row.attempts, 3600)
            row.attempts += 1
            row.failed = terminal or row.attempts >= MAX_ATTEMPTS
            self.model.give_back(row)

    @precondition(lambda self: any(r.failed for r in self.model.rows.values()))
    @rule()
    def reset(self) -> None:
        """``sluicegate reset``: parked partitions are queued again."""
        self._tick()
        parked = [r for r in self.model.rows.values() if r.failed]
        assert self.ledger.partitions.reset_failed(self.task) == len(parked)
        for r in parked:
            r.failed, r.attempts, r.next_attempt_at = False, 0, None

    # ------------------------------------------------------------------ invariants

    def _rows(self) -> dict[int, tuple[Any, ...]]:
        table = self.ledger.table_prefix + "partitions"
        ph = "%s" if self.ledger.dialect is db.POSTGRESQL else "?"
        cur = self.ledger.conn.execute(
            f"SELECT keys, version, exported_version, claim_token, claimed_version, attempts, failed, forced,"
            f" path, next_attempt_at IS NULL FROM {table} WHERE task = {ph}",
            (self.task.name,),
        )
        out = {}
        for keys, *rest in cur.fetchall():
            key = int((keys if isinstance(keys, dict) else json.loads(keys))["k"])
            version, exported, token, claimed, attempts, failed, forced, path, no_next = rest
            out[key] = (
                int(version), int(exported), None if token is None else str(token), claimed, int(attempts),
                bool(failed), bool(forced), path, bool(no_next),
            )  # fmt: skip
        return out

    @invariant()
    def ledger_agrees_with_model(self) -> None:
        rows = self._rows()
        for key, (version, exported, *_) in rows.items():
            assert exported <= version, f"partition {key}: exported_version {exported} > version {version}"
            before = self.seen.get(key, (0, 0))
            assert version >= before[0] and exported >= before[1], f"partition {key} went back from {before}"
            self.seen[key] = (version, exported)
        expected = {
            k: (r.version, r.exported, r.token, r.claimed_version, r.attempts, r.failed, r.forced, r.path,
                r.next_attempt_at is None)
            for k, r in self.model.rows.items()
        }  # fmt: skip
        assert rows == expected

    @invariant()
    def counts_agree(self) -> None:
        s = self.ledger.partitions.status(self.task)
        assert (s.pending, s.claimed, s.exported, s.failed, s.waiting, s.retrying) == self.model.status()
        due = {self._key(c) for c in self.ledger.partitions.pending(self.task, limit=len(KEYS))}
        assert due == self.model.claimable() | self.model.claimable(dead=True)


class PlaceFailed(Exception):
    """Putting a batch's files in place failed (an injected fault)."""


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def ledgers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Ledger]]:
    """Two connections to one fresh ledger, as two workers."""
    url = (
        f"sqlite:///{tmp_path / 'ledger.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    opened = [Ledger(url), Ledger(url)]
    opened[0].ensure_schema()
    yield opened
    for ledger in opened:
        ledger.close()


def test_ledger_against_model(ledgers: list[Ledger]) -> None:
    """Every sequence of operations the machine tries leaves the ledger where the model says."""
    machine = type("BoundLedgerMachine", (LedgerMachine,), {"ledgers": ledgers})
    run_state_machine_as_test(machine, settings=MODEL_SETTINGS)


@pytest.mark.pg
def test_array_literals_read_back_as_the_values_they_were_made_of(pg_url: str) -> None:
    """The ledger passes a batch's paths, checksums and etags as one array literal each
    (core.pg_array): any text, quotes, backslashes, braces, commas, "NULL" and empty strings
    included, must come back unchanged, and None as NULL."""
    import psycopg

    with psycopg.connect(pg_url) as conn:

        @given(
            st.lists(
                st.none()
                | st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
            )
        )
        @settings(
            max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
        )
        def round_trip(values: list[str | None]) -> None:
            assert conn.execute("SELECT %s::text[]", [pg_array(values)]).fetchone() == (values,)

        round_trip()
        fixed = ['a"b', "c\\d", "{e,f}", "NULL", "", " g ", "é\n\t", None]
        assert conn.execute("SELECT %s::text[]", [pg_array(fixed)]).fetchone() == (fixed,)
        ints = [0, -1, 2**63 - 1, None]
        assert conn.execute("SELECT %s::bigint[]", [pg_array(ints)]).fetchone() == (ints,)
