"""The ledger's hot statements stay linear in the batch size (PostgreSQL plans)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg

from sluicegate.ledger import Ledger

BATCH = 500
PENDING = """
INSERT INTO sluicegate.partitions (task, pkey, keys, zone, changed_at)
SELECT 'openaq', '[' || n || ']', jsonb_build_object('location_id', n), 'UTC', now() - interval '1 hour'
FROM generate_series(1, %(n)s) AS n
"""


def _removed_by_filters(plan: Any) -> int:
    """Rows every node of an EXPLAIN (ANALYZE, FORMAT JSON) plan threw away after reading them."""
    own = sum(int(plan.get(k, 0)) for k in ("Rows Removed by Join Filter", "Rows Removed by Filter"))
    return own + sum(_removed_by_filters(child) for child in plan.get("Plans", ()))


def test_holding_and_committing_a_batch_meets_each_row_once(pg_url: str) -> None:
    with Ledger(pg_url) as ledger:
        ledger.ensure_schema()
        conn = ledger.conn
        conn.execute(PENDING, {"n": 40 * BATCH})
        conn.execute("ANALYZE sluicegate.partitions")
        q = ledger.partitions.q
        token = uuid.uuid4()
        claim = {"task": "openaq", "settle": 0.0, "limit": BATCH, "lease": 600.0, "token": token}
        ids = [row[0] for row in conn.execute(q["claim"], claim).fetchall()]
        assert len(ids) == BATCH
        batch = {
            "ids": ids, "tokens": [token] * BATCH, "paths": ["p"] * BATCH, "rows": [1] * BATCH,
            "bytes": [1] * BATCH, "checksums": ["0"] * BATCH, "etags": [None] * BATCH,
        }  # fmt: skip
        for name in ("hold", "commit_held"):
            with conn.transaction(force_rollback=True):
                [[explained]] = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + q[name], batch).fetchall()
            plan = (explained if isinstance(explained, list) else json.loads(explained))[0]["Plan"]
            assert plan["Actual Rows"] == BATCH
            # A join on the token (the same for the whole batch) met every row with every other.
            assert _removed_by_filters(plan) < BATCH, f"{name} read {_removed_by_filters(plan)} extra rows"


def test_a_commit_is_fenced_by_the_token(pg_url: str) -> None:
    with Ledger(pg_url) as ledger:
        ledger.ensure_schema()
        ledger.conn.execute(PENDING, {"n": 3})
        q = ledger.partitions.q
        token = uuid.uuid4()
        claim = {"task": "openaq", "settle": 0.0, "limit": 3, "lease": 600.0, "token": token}
        ids = sorted(row[0] for row in ledger.conn.execute(q["claim"], claim).fetchall())
        stale = [token, uuid.uuid4(), token]  # the second claim was taken over by another worker
        batch = {
            "ids": ids, "tokens": stale, "paths": ["p"] * 3, "rows": [1] * 3, "bytes": [1] * 3,
            "checksums": ["0"] * 3, "etags": [None] * 3,
        }  # fmt: skip
        with ledger.conn.transaction():
            held = sorted(row[0] for row in ledger.conn.execute(q["hold"], batch).fetchall())
            done = sorted(row[0] for row in ledger.conn.execute(q["commit_held"], batch).fetchall())
        assert held == done == [ids[0], ids[2]]
        with psycopg.connect(pg_url) as conn:
            left = conn.execute(
                "SELECT id FROM sluicegate.partitions WHERE claim_token IS NOT NULL"
            ).fetchall()
        assert left == [(ids[1],)]


def _index_scans(plan: Any) -> set[str]:
    """The indexes an EXPLAIN (FORMAT JSON) plan reads."""
    own = {plan["Index Name"]} if "Index Name" in plan else set()
    return own.union(*(_index_scans(child) for child in plan.get("Plans", ())))


def test_the_paths_of_a_batch_are_looked_up_by_index_and_long_paths_are_recorded(pg_url: str) -> None:
    """The claim loop's check that no partition takes another's file looks the batch's paths up
    by (task, left(path, 500)): a btree entry of the whole path would refuse a 3,000-byte path
    ("index row size exceeds btree maximum"), which a local folder allows."""
    with Ledger(pg_url) as ledger:
        ledger.ensure_schema()
        conn = ledger.conn
        conn.execute(PENDING, {"n": 40 * BATCH})
        long = "d/" + "".join(uuid.uuid4().hex for _ in range(100)) + ".csv"  # 3,206 bytes, incompressible
        conn.execute(
            "UPDATE sluicegate.partitions SET path = CASE WHEN id = 7 THEN %s ELSE 'p/' || id || '.csv' END",
            (long,),
        )
        conn.execute("ANALYZE sluicegate.partitions")

        paths = {f"p/{i}.csv" for i in range(1, BATCH + 1)} - {"p/7.csv"} | {long, "p/none.csv", "p/1.csv "}
        found = ledger.partitions.paths_taken("openaq", paths)
        assert sorted(t.pkey for t in found) == sorted(f"[{i}]" for i in range(1, BATCH + 1))
        assert {t.path for t in found} == paths - {"p/none.csv", "p/1.csv "}
        taken = {"task": "openaq", "paths": "{" + ",".join(f'"{p}"' for p in sorted(paths)) + "}"}
        [[explained]] = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + ledger.partitions.q["paths_taken"], taken
        ).fetchall()
        plan = (explained if isinstance(explained, list) else json.loads(explained))[0]["Plan"]
        assert _index_scans(plan) == {"partitions_path_idx"}
