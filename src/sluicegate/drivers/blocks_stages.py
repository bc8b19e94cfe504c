"""Running the stages of claimed blocks, and recording each outcome on the ledger.

Stages that write files go through the :class:`~sluicegate.pipeline.Pipeline`: ``extract``
(one work unit per claimed block, its records from ``select.sql`` or a callable, written as
a JSON lines artifact, optionally Fernet-encrypted) and ``publish`` to a file (the
artifact's records in any format sluicegate writes). Stages that write elsewhere run block
by block: ``load`` (into a table: :mod:`.blocks_load`) and callables (``fn(block, records,
config)``, e.g. an open-data portal's upsert). Every outcome is recorded through one
:class:`StageRecorder`: fenced by the claim token, ``done`` or ``no_data`` with counts, or a
failure with backoff or parking.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import paths
from ..changes import ChangeFeed
from ..exceptions import DataError, SluicegateError, TerminalError, is_transient, printable
from ..formats.jsonl import decrypt, parse_records
from ..ledger import BlockStore, StageClaim, StageResult
from ..ledger.leases import LeaseKeeper
from ..options import Budget, TaskSummary
from ..pipeline import Pipeline
from ..records import MAX_MESSAGES, Fitting
from ..sources import Column, ColumnKind, ReadSpec, Slice
from ..timeblocks import StageBlock, path_fields
from ..work import Deadline, Outcome, Place, Previous, UnitFailed, WorkUnit
from . import Context
from .blocks_config import StageSpec, callable_error, import_callable, loaded
from .blocks_plan import LeasesExpired

if TYPE_CHECKING:
    from .blocks import Task
    from .blocks_load import Loader

CHUNK = 1000  # records per chunk handed to a writer
# The file column kind of each declared kind (records.KINDS).
COLUMN_KIND: dict[str, ColumnKind] = {
    "text": "text", "int": "int", "float": "float", "bool": "bool",
    "json": "text", "timestamptz": "timestamptz", "epoch_ms": "timestamptz",
}  # fmt: skip


def read_spec(task: Task, stage: StageSpec) -> ReadSpec:
    """How select.sql is cut into blocks: by the key column and the ``time`` column, ``[start, end)``."""
    return ReadSpec(
        select_sql=task.select_sql,
        folder=task.folder,
        keys=(task.key,) if task.key else (),
        time_column=stage.time,
    )


def unit_key(claim: StageClaim) -> str:
    """A (block, stage) in messages and summaries: ``lime 2020-01-01T01:00-06:00 extract`` (the key
    value as :func:`printable` shows it: a newline in it must not split an error line)."""
    return " ".join(p for p in (printable(claim.key_value), claim.block.label, claim.stage) if p)


def stage_block(task: Task, claim: StageClaim) -> StageBlock:
    """What a callable is told about the block it works on."""
    return StageBlock(
        task=task.name,
        stage=claim.stage,
        key=task.key,
        key_value=claim.key_value,
        block=claim.block,
        attempt=claim.attempts,
    )


class StageRecorder:
    """Records (block, stage) outcomes: the pipeline's recorder, and the per-block stages'."""

    def __init__(
        self,
        task: Task,
        store: BlockStore,
        lease: float,
        summary: TaskSummary,
        delete: Callable[[str], None] | None = None,
        feed: ChangeFeed | None = None,
    ) -> None:
        self.task = task
        self.store = store
        self.lease = lease
        self.summary = summary
        self.fitted: dict[int, Fitting] = {}  # claim id: a publish's records (those that did not fit)
        self._delete = delete  # the destination's: files of later stages a "no data" makes stale
        self._feed = feed  # the change feed, told of those deletions
        self._files = {s.name for s in task.stages if s.path is not None}

    def forgetter(self, claim: StageClaim) -> Callable[[str, str], None]:
        """``forget(stage, artifact)`` for the commit of ``claim``'s "no data": a later stage's
        file, published from rows a forced re-run found gone, is deleted (it was left in place
        while the ledger said "no data"), and the deletion written to the change feed before
        the commit, as every deletion is (its readers had the file as published)."""
        return lambda stage, artifact: self._forget(claim, stage, artifact)

    def _forget(self, claim: StageClaim, stage: str, artifact: str) -> None:
        if self._delete is None or stage not in self._files:
            return
        self._delete(artifact)
        if self._feed is not None:
            keys = {"key": claim.key_value, "block": claim.block.label, "stage": stage}
            self._feed.deleted(artifact, keys=keys)

    def commit(self, outcomes: Sequence[Outcome], place: Place) -> list[bool]:
        """Put the files in place, then record them (``done`` with the file, or ``no_data``), in one
        ledger transaction that first locks the rows still held under their claims: a worker
        whose lease was taken over places nothing. Its extract may be older than the new
        owner's (rows arrived since), and placed after it, it replaced the newer artifact."""
        by_id = {o.unit.handle.id: o for o in outcomes}
        results = [self._result(o) for o in outcomes]
        recorded = self.store.commit_placed(
            results, lambda held: place([by_id[r.claim.id] for r in held]), forget=self.forgetter
        )
        return [self.record(r, done=done) for r, done in zip(results, recorded, strict=True)]

    def _result(self, o: Outcome) -> StageResult:
        fit = self.fitted.pop(o.unit.handle.id, None)
        skipped, dups = (fit.skipped, fit.last) if fit else ([], None)
        duplicates, messages = (dups.duplicates, dups.messages) if dups else (0, [])
        return StageResult(
            claim=o.unit.handle, status="done" if o.rows or skipped else "no_data",
            total=o.rows + len(skipped) + duplicates, processed=o.rows, errors=len(skipped),
            duplicates=duplicates,
            error="; ".join((skipped + messages)[:MAX_MESSAGES])[:2000] or None,
            artifact=o.path, bytes=o.nbytes if o.path else None, checksum=o.checksum,
        )  # fmt: skip

    def record(self, result: StageResult, *, done: bool | None = None) -> bool:
        """Record a finished stage, fenced by its claim; False when the lease was lost.

        ``done``: the commit already ran (in the transaction of a load's rows), with this outcome.
        """
        if done is None:
            done = self.store.commit(result, forget=self.forgetter(result.claim))
        counts = (result.total, result.processed, result.errors, result.duplicates)
        self._entry(result.claim, result.status if done else "lost", *counts, result.artifact, result.error)
        return done

    def finish(self, result: StageResult, *, done: bool | None = None) -> None:
        """Record a stage that ran block by block (``done``: already recorded, with this outcome)
        and count it in the summary."""
        if self.record(result, done=done):
            self.summary.note_success(unit_key(result.claim))
            self.summary.rows += result.processed
        else:
            self.summary.lost += 1

    def failed(
        self, claim: StageClaim, error: SluicegateError, *, counts: tuple[int, int, int] | None = None
    ) -> None:
        """Record a stage that failed block by block, and count it in the summary."""
        self.summary.note_failure(unit_key(claim), self.fail_claim(claim, error, counts))

    def fail(self, unit: WorkUnit, error: SluicegateError) -> None:
        """Record a failed unit of the pipeline."""
        self.fail_claim(unit.handle, error)

    def fail_claim(
        self, claim: StageClaim, error: SluicegateError, counts: tuple[int, int, int] | None = None
    ) -> str:
        """Retry later with backoff, or park (terminal, or out of attempts); return the error recorded:
        a parked one does not say "will retry"."""
        terminal = not is_transient(error)
        parked = terminal or claim.attempts + 1 >= self.task.max_attempts  # as the ledger's fail decides
        text = str(error).removesuffix("; will retry") if parked else str(error)
        self.store.fail(
            claim,
            error=text,
            terminal=terminal,
            max_attempts=self.task.max_attempts,
            backoff=self.task.backoff,
            counts=counts,
            counted=not isinstance(error, LeasesExpired),  # parked for the expired leases: no attempt
        )
        total, processed, errors = counts or (0, 0, 0)
        self._entry(claim, "failed", total, processed, errors, 0, None, text)
        return text

    def renew(self, tokens: Collection[str]) -> None:
        """Extend the leases of the claims in hand."""
        for token in tokens:
            self.store.renew(token, lease=self.lease)

    def release(self, tokens: Collection[str]) -> int:
        """Give back what is still held, without an attempt."""
        return sum(self.store.release(token) for token in tokens)

    def _entry(
        self, claim: StageClaim, status: str, total: int, processed: int, errors: int, duplicates: int,
        artifact: str | None, error: str | None,
    ) -> None:  # fmt: skip
        self.summary.stages.append(
            {
                "key": claim.key_value,
                "block": claim.block.label,
                "stage": claim.stage,
                "status": status,
                "records": total,
                "processed": processed,
                "errors": errors,
                "duplicates": duplicates,  # records another of their key replaced: not processed
                "artifact": artifact,
                **({"error": error} if error else {}),
            }
        )


def key_param(task: Task, value: str, columns: Sequence[Column]) -> Any:
    """A key value (text on the ledger) as the select's key column compares it: an integer column
    takes the integer. SQLite compares 1 and '1' as different where the column has no integer
    affinity (an expression such as ``p.pid + 0``): every block of such a key was "no data"."""
    kind = next((c.kind for c in columns if c.name == task.key), None)
    digits = value.removeprefix("-")  # not lstrip: int() refuses "--1"; nor "²", a digit to isdigit
    if kind == "int" and digits.isascii() and digits.isdigit() and str(int(value)) == value:
        return int(value)
    return task.typed_key(value)


class StageRunner:
    """Runs one stage over a group of claims of one batch."""

    def __init__(
        self, context: Context, task: Task, recorder: StageRecorder, budget: Budget, loader: Loader
    ) -> None:
        self.context = context
        self.task = task
        self.recorder = recorder
        self.summary = recorder.summary
        self.budget = budget
        self.lease = context.project.settings.lease
        self.loader = loader

    def close(self) -> None:
        """Close the table connections opened for loads."""
        self.loader.close()

    def run(self, stage: StageSpec, claims: Sequence[StageClaim]) -> None:
        """Run ``stage`` for ``claims`` (raises Deadline when the time budget ran out)."""
        if not (claims := [c for c in claims if not self._spent(c)]):
            return
        if stage.type == "extract":
            self._extract(stage, claims)
        elif stage.type == "publish" and stage.callable is None:
            self._files(stage, claims, self._artifact_chunks(stage), _columns(stage))
        else:  # a load or a callable may take longer than the lease: renewed all along
            ctx = self.context
            keeper = LeaseKeeper(ctx.ledger.url, ctx.ledger.schema, BlockStore, lease=self.lease)
            keeper.keep(c.token for c in claims)
            try:
                for claim in claims:
                    if stage.callable is None:
                        self.loader.load(stage, claim, self.artifact_passes)
                    else:
                        self._per_block(stage, claim)
            finally:
                keeper.close()

    def _spent(self, claim: StageClaim) -> bool:
        """Park, unrun, a stage whose leases expired ``max_attempts`` times (a block that kills
        its process must not be retried for ever); True when it was parked."""
        if claim.attempts < self.task.max_attempts:
            return False
        self.recorder.failed(claim, LeasesExpired(claim.attempts, self.task.name))
        return True

    # ------------------------------------------------------------------ through the pipeline

    def _extract(self, stage: StageSpec, claims: Sequence[StageClaim]) -> None:
        ctx = self.context
        if stage.callable is None:
            spec = read_spec(self.task, stage)
            columns = ctx.columns(self.task, spec)
            self._files(
                stage,
                claims,
                lambda units: ctx.source.read(spec, [u.slice for u in units], columns, "rows"),
                columns,
            )
        else:
            self._files(stage, claims, self._callable_chunks(stage), [])

    def _files(
        self,
        stage: StageSpec,
        claims: Sequence[StageClaim],
        read: Any,
        columns: Sequence[Column],
    ) -> None:
        """Export the claims' files through the pipeline, one batch (a unit's failure is its own)."""
        ctx = self.context
        key = ctx.project.settings.fernet_key if stage.encrypt else None
        pipeline = Pipeline(
            read=read,
            format=stage.format,
            columns=columns,
            mode="rows",
            destination=ctx.destination,
            recorder=self.recorder,
            summary=self.summary,
            budget=self.budget,
            lease=self.lease,
            fault=ctx.fault,
            fernet_key=key,
            feed=ctx.feed(self.task),
            # a slow API held an extract past its lease (renewed between chunks): taken over as dead
            keeper=LeaseKeeper(ctx.ledger.url, ctx.ledger.schema, BlockStore, lease=self.lease),
        )
        with pipeline:
            units = [u for c in claims if (u := self._unit(stage, c, pipeline, columns)) is not None]
            try:
                pipeline.export(units)
            finally:
                pipeline.flush()

    def _unit(
        self, stage: StageSpec, claim: StageClaim, pipeline: Pipeline, columns: Sequence[Column]
    ) -> WorkUnit | None:
        value = key_param(self.task, claim.key_value, columns)
        piece = Slice(
            keys=(value,) if self.task.key else (),
            start=claim.block.start,
            end=claim.block.end,
            zone=self.task.zone,
        )
        unit = WorkUnit(key=unit_key(claim), slice=piece, path="", token=claim.token, handle=claim)
        try:
            path = self.path(stage, claim)
            self.context.destination.check_path(path)
        except SluicegateError as exc:
            pipeline.fail(unit, exc)
            return None
        previous = Previous(path=claim.prev_artifact, checksum=claim.prev_checksum)
        keys = {"key": claim.key_value, "block": claim.block.label, "stage": claim.stage}
        return WorkUnit(  # fenced: on S3 a late worker's upload is refused, left to the held claim's commit
            key=unit.key, slice=piece, path=path, token=claim.token, previous=previous, handle=claim,
            keys=keys, fenced=True,
        )  # fmt: skip

    def path(self, stage: StageSpec, claim: StageClaim) -> str:
        """The rendered path of a stage's file for a block."""
        assert stage.path is not None
        fields = path_fields(
            task=self.task.name,
            stage=stage.name,
            key=self.task.key,
            key_value=claim.key_value,
            block=claim.block,
        )
        fields |= {"format": stage.format, "ext": stage.format}
        return paths.render(stage.path, fields, checked=[self.task.key] if self.task.key else [])

    def _callable_chunks(self, stage: StageSpec) -> Any:
        assert stage.callable is not None
        fn = import_callable(stage.callable, self.task.folder.parent.parent, stage.name)

        def read(units: Sequence[WorkUnit]) -> Iterator[tuple[int, Any]]:
            for index, unit in enumerate(units):
                claim: StageClaim = unit.handle
                where = f"{stage.callable} for {unit_key(claim)}"
                try:
                    records = fn(stage_block(self.task, claim), self.task.config_for(stage, claim.key_value))
                    yield from ((index, chunk) for chunk in _chunks(self._until_stop(records), where))
                except Deadline:
                    raise
                except (Exception, SystemExit) as exc:  # sys.exit() too: this block fails, the others go on
                    yield index, UnitFailed(callable_error(exc, where))

        return read

    def _until_stop(self, records: Iterable[Any]) -> Iterator[Any]:
        """``records``, asked for the next one only while the run is not told to stop and has time
        left: an API that pages new trips for ever ignored SIGTERM (the pipeline checks between
        chunks, of 1000 records), so its unit is released unfinished instead."""
        for record in records:
            yield record
            if self.budget.stopped() or self.budget.over():
                raise Deadline

    def _artifact_chunks(self, stage: StageSpec) -> Any:
        columns, keyed = stage.columns, loaded(self.task.stages)  # the table's rows: the last per key

        def read(units: Sequence[WorkUnit]) -> Iterator[tuple[int, Any]]:
            for index, unit in enumerate(units):
                try:
                    records = self.recorder.fitted[unit.handle.id] = Fitting(
                        self.artifact_passes(unit.handle), columns, keyed
                    )
                    yield from ((index, chunk) for chunk in _chunks(records, unit.key))
                    skipped = records.skipped
                    if skipped and len(skipped) == records.seen:  # as the load: nothing fit, it failed
                        raise DataError(f"{unit.key}: all {len(skipped)} records were rejected: {skipped[0]}")
                except SluicegateError as exc:  # this block's artifact; the others go on
                    yield index, UnitFailed(exc)

        return read

    # ------------------------------------------------------------------ block by block

    def artifact(self, claim: StageClaim) -> Iterator[dict[str, Any]]:
        """The records the extract stage wrote for the block of ``claim``, at the path it recorded
        (an edited ``[extract] path`` would point later stages at a file never written)."""
        return self.artifact_passes(claim)()

    def artifact_passes(self, claim: StageClaim) -> Callable[[], Iterator[dict[str, Any]]]:
        """:meth:`artifact` read (and decrypted) once, each call a new pass over its records."""
        extract = self.task.stages[0]
        path = self.recorder.store.extracted(claim, extract.name) or self.path(extract, claim)
        key = self.context.project.settings.fernet_key if extract.encrypt else None
        where = self.context.destination.display(path)
        data = self.context.destination.read(path)
        lines = decrypt(data, key, where)
        return lambda: parse_records(lines, where)

    def _per_block(self, stage: StageSpec, claim: StageClaim) -> None:
        """A callable's stage: hand it the block's records, record the counts it returns."""
        assert stage.callable is not None
        try:
            fn = import_callable(stage.callable, self.task.folder.parent.parent, stage.name)
            config = self.task.config_for(stage, claim.key_value)
            *counts, messages = _counts(
                fn(stage_block(self.task, claim), self.artifact(claim), config), stage.callable
            )
        except (Exception, SystemExit) as exc:  # a library's sys.exit() fails this block only
            self.recorder.failed(claim, callable_error(exc, f"{stage.callable} for {unit_key(claim)}"))
            return
        (total, processed, errors), reason = counts, "; ".join(messages) or "no reason given"
        if total and errors >= total:
            rejected = DataError(f"all {total} records were rejected: {reason}")
            self.recorder.failed(claim, rejected, counts=(total, processed, errors))
            return
        self.recorder.finish(stage_result(claim, total, processed, errors, messages, stage.callable))


def stage_result(
    claim: StageClaim,
    total: int,
    processed: int,
    errors: int,
    messages: list[str],
    artifact: str | None,
    duplicates: int = 0,
) -> StageResult:
    """A stage finished block by block: ``done`` with its counts, or ``no_data`` without records."""
    return StageResult(
        claim=claim,
        status="done" if total else "no_data",
        total=total,
        processed=processed,
        errors=errors,
        duplicates=duplicates,
        artifact=artifact,
        error="; ".join(messages)[:2000] or None,
    )


def _chunks(records: Iterable[Any], where: str) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for record in records:
        if not isinstance(record, dict | tuple):
            raise DataError(f"{where} gave a {type(record).__name__}, not a record (a dict)")
        chunk.append(record)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _columns(stage: StageSpec) -> list[Column]:
    return [Column(name=name, kind=COLUMN_KIND[kind]) for name, kind in stage.columns]


def _counts(counts: Any, where: str) -> tuple[int, int, int, list[str]]:
    """``(total, processed, errors, messages)`` from what a callable returned (a mapping of counts,
    and the first of its ``messages``, the reasons for its errors: without them, none was kept)."""
    if not isinstance(counts, Mapping):
        raise TerminalError(f"{where} returned {type(counts).__name__}, not counts such as {{'total': 10}}")
    try:
        total = int(counts["total"])
        errors = int(counts.get("errors", 0))
        processed = int(counts.get("processed", total - errors))
    except (KeyError, TypeError, ValueError):
        raise TerminalError(
            f"{where} must return counts such as {{'total': 10, 'processed': 9, 'errors': 1}}"
        ) from None
    messages = counts.get("messages", [])
    if not (isinstance(messages, list) and all(isinstance(m, str) for m in messages)):
        raise TerminalError(f"{where} returned messages {messages!r}, not a list of sentences")
    return total, processed, errors, messages[:MAX_MESSAGES]
