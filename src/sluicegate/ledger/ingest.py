"""What ingest tasks ingested: one log row per batch, and the messages parked as malformed.

These tables live in the database of the ingested table (the source database, like the
capture inbox), because they are written in the transaction that inserts the batch's rows:
the log row exists exactly when the rows committed. :meth:`IngestStore.create` makes them on
first use.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .. import db
from ..exceptions import DataError, LedgerError
from .core import LedgerCore, Store


class IngestStore(Store):
    """The ``ingest_batches`` log and the ``ingest_parked`` messages, in the ingested table's database."""

    SQL = "ingest"

    def __init__(self, core: LedgerCore) -> None:
        super().__init__(core)
        self.parked_locks: set[str] = set()  # MariaDB: the tasks whose lock_parked this connection holds

    def exists(self) -> bool:
        """Whether the ingest tables exist."""
        return self._run("exists", schema=self.core.schema).fetchone() is not None

    def create(self) -> None:
        """Create the ingest tables if they are missing (idempotent, safe to race)."""
        if self.exists():
            return

        def create(cur: Any) -> None:
            self._script("create", cur)

        try:
            self.core.in_transaction(create)
        except LedgerError as exc:
            where = "schema " + self.core.schema if self.core.dialect is db.POSTGRESQL else "the database"
            raise DataError(
                f"cannot create the ingest log tables in {where} ({exc}); ingest records each batch "
                "next to the table it writes: let the database user create them"
            ) from exc

    def record(
        self, cur: Any, task: str, *, received: int, inserted: int, malformed: int, ids: Sequence[str]
    ) -> None:
        """Log one batch in the transaction of its rows (``cur``); the others received were duplicates."""
        self._run(
            "record", cur, task=task, received=received, inserted=inserted, malformed=malformed,
            duplicates=received - inserted - malformed, message_ids=json.dumps(list(ids)),
        )  # fmt: skip

    def park(self, cur: Any, task: str, *, message_id: str | None, body: str, error: str) -> bool:
        """Keep a malformed message and the reason, in the transaction of its batch (``cur``);
        False when it was parked before (its id, or for a message without one its body)."""
        self.lock_parked(cur, task)  # before the first park of a batch: one order of locks for all
        cur = self._run("park", cur, task=task, message_id=message_id, body=body, error=error)
        return int(cur.rowcount) > 0

    def lock_parked(self, cur: Any, task: str) -> None:
        """Before parking: wait for another transaction parking messages of ``task`` to end. A
        message without an id was parked before only if its body was, and no index holds bodies,
        so two ingests of one file at once both found a body not parked yet and kept it twice.
        Taken before a batch's first park, whatever its id, so no batch holds a parked row another
        waits for while waiting for this lock. SQLite: BEGIN IMMEDIATE serializes batches already.
        MariaDB's lock lasts until :meth:`unlock_parked`."""
        if self.core.dialect is db.POSTGRESQL:
            self._run("lock_parked", cur, task=task).fetchall()
        elif self.core.dialect is db.MARIADB and task not in self.parked_locks:
            if self._run("lock_parked", cur, task=task).fetchone()[0] != 1:
                raise LedgerError(
                    f"another ingest of task {task} held its parked messages for 30 s; this batch is"
                    " not committed: ingest its messages again"
                )
            self.parked_locks.add(task)

    def unlock_parked(self) -> None:
        """MariaDB: free the locks :meth:`lock_parked` took on this connection, once the batch's
        transaction ended (a lost connection freed them already); none held: no round trip."""
        held, self.parked_locks = sorted(self.parked_locks), set()
        for task in held if held and not self.core.conn.closed else ():
            self._run("unlock_parked", task=task).fetchall()

    def status(self, task: str) -> dict[str, Any]:
        """An ingest task's totals: batches, messages received, inserted, duplicates, malformed, parked."""
        if not self.exists():
            return {"batches": 0, "received": 0, "inserted": 0, "duplicates": 0, "malformed": 0, "parked": 0}
        batches, received, inserted, duplicates, malformed, last, parked = self._run(
            "status", task=task
        ).fetchone()
        return {
            "batches": int(batches),
            "received": int(received),
            "inserted": int(inserted),
            "duplicates": int(duplicates),
            "malformed": int(malformed),
            "parked": int(parked),
            "last_batch": self.core.from_ts(last),
        }

    def parked(self, task: str, *, limit: int = 50) -> list[dict[str, Any]]:
        """The latest parked messages of ``task``, newest first."""
        rows = self._run("parked", task=task, limit=limit).fetchall()
        return [
            {"message_id": r[0], "error": r[1], "body": r[2], "parked_at": self.core.from_ts(r[3])}
            for r in rows
        ]
