"""The built-in load stage of blocks tasks: a block's records into a table, through the table sink.

The records are checked against the stage's declared columns (:mod:`sluicegate.records`);
the rows that fit go into the table through :class:`~sluicegate.tables.TableSink` by the
stage's mode (``upsert`` by key, ``replace`` the table's rows, ``insert`` new keys only), in
one transaction per block on PostgreSQL and SQLite and for upserts on MariaDB (a replace on
MariaDB fills a copy and swaps it in). Records that do not fit and rows the database refuses
are counted, with their first messages, and the others are written; a block none of whose
records could be written fails. When the table is in the ledger database, the (block,
stage) record is written in the rows' transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .. import db, mariadb_conn
from ..exceptions import DataError, LedgerError, SluicegateError, TerminalError
from ..ledger import StageClaim, StageResult
from ..records import MAX_MESSAGES, KeptPerKey, Rows
from ..tables import Rejected, TableSink
from . import Context
from .blocks_config import StageSpec, declared
from .blocks_stages import stage_result, unit_key

if TYPE_CHECKING:
    from .blocks_stages import StageRecorder


class Loader:
    """Runs load stages block by block; keeps one table sink per stage for the run."""

    def __init__(self, context: Context, recorder: StageRecorder) -> None:
        self.context = context
        self.recorder = recorder
        self._sinks: dict[str, TableSink] = {}

    def close(self) -> None:
        """Close the table connections."""
        for sink in self._sinks.values():
            sink.close()
        self._sinks.clear()

    def load(
        self,
        stage: StageSpec,
        claim: StageClaim,
        read: Callable[[StageClaim], Callable[[], Iterable[Mapping[str, Any]]]],
    ) -> None:
        """The built-in load: the block's records (each ``read(claim)()`` a pass over them) into
        the stage's table, in one transaction.

        When the table is in the ledger database, that transaction also records the stage
        ``done``, so a crash leaves both or neither. Elsewhere the record follows the commit;
        a crash in between runs the block's load again after the lease, which writes the same
        rows (upsert and insert by key; replace: the whole table again), never a second copy.
        """
        assert stage.target is not None
        shared = db.same_database(stage.target.url, self.context.project.settings.ledger_url)
        recorded = False
        try:
            sink = self._sink(stage)
            # the last record per key, whatever the mode: what the publish has (an upsert kept the
            # last, insert and replace the first; the file had both)
            # last, in a first pass: the records are not held, only their rows
            passes = read(claim)
            last = KeptPerKey.of(passes(), declared(stage))
            records = (r for n, r in enumerate(passes(), 1) if n in last.numbers)
            rows = declared(stage).rows(records, sink.db.flavor, sorted(last.numbers))
            rejected: Rejected = []

            def before_commit(cur: Any) -> None:
                nonlocal recorded
                result = self._load_result(stage, claim, rows, rejected, last)  # all rejected: abandon
                if shared and cur is not None:
                    if not self.recorder.store.commit(result, cur=cur, forget=self.recorder.forgetter(claim)):
                        raise _Lost(f"{unit_key(claim)}: the claim was taken over; nothing was written")
                    recorded = True

            if rows.rows:
                sink.write(declared(stage).names, rows.rows, before_commit=before_commit, rejected=rejected)
                self.context.fault("after_load_commit")  # the rows are in; the record may not be
            result = self._load_result(stage, claim, rows, rejected, last)
        except _AllRejected as exc:
            self.recorder.failed(claim, exc, counts=exc.counts)
            return
        except _Lost:
            self.recorder.finish(self._load_result(stage, claim, rows, rejected, last), done=False)
            return
        except Exception as exc:
            if not isinstance(exc, DataError):  # a lost connection: the next block reconnects
                self._drop_sink(stage)
            where = f"{stage.name} for {unit_key(claim)}"
            error = (
                exc
                if isinstance(exc, SluicegateError)
                else TerminalError(f"{where}: {type(exc).__name__}: {exc}")
            )
            self.recorder.failed(claim, error)
            return
        self.recorder.finish(result, done=True if recorded else None)

    def _load_result(
        self, stage: StageSpec, claim: StageClaim, rows: Rows, rejected: Rejected, last: KeptPerKey
    ) -> StageResult:
        """What a load records: counts (a record another of its key replaced is a duplicate) and the
        first messages; raises _AllRejected when no record of the block was written although it had some."""
        assert stage.target is not None
        columns = declared(stage)
        messages = rows.messages + [f"{columns.shown_key(tuple(row))}: {exc}" for row, exc in rejected]
        processed, errors = len(rows.rows) - len(rejected), rows.errors + len(rejected)
        total = rows.total + last.duplicates
        if rows.total and not processed:
            raise _AllRejected(
                f"all {rows.total} records were rejected: {'; '.join(messages[:MAX_MESSAGES])}",
                counts=(total, 0, errors),
            )
        messages = (messages + last.messages)[:MAX_MESSAGES]
        return stage_result(claim, total, processed, errors, messages, stage.target.table, last.duplicates)

    def _sink(self, stage: StageSpec) -> TableSink:
        """The stage's table sink, opened (and its table created, with ``create``) once per run."""
        assert stage.target is not None
        sink = self._sinks.get(stage.name)
        if sink is None:
            sink = self._sinks[stage.name] = TableSink(stage.target, lease=self.recorder.lease)
            if stage.create:
                table = stage.target.table
                flavor = sink.db.flavor
                exact = mariadb_conn.exact_collation(sink.db.conn) if flavor == "mariadb" else ""
                sink.db.create_table(table, declared(stage).create_sql(flavor, table, exact=exact))
        return sink

    def _drop_sink(self, stage: StageSpec) -> None:
        sink = self._sinks.pop(stage.name, None)
        if sink is not None:
            sink.close()


class _AllRejected(DataError):
    """No record of a block fitted the columns or the table: the load is abandoned, and fails."""

    def __init__(self, message: str, *, counts: tuple[int, int, int]) -> None:
        super().__init__(message)
        self.counts = counts


class _Lost(LedgerError):
    """The claim was taken over before the load committed: its rows are abandoned."""
