"""AWS Lambda entry point: set the function's handler to ``sluicegate.aws_lambda.handler``.

Two kinds of event are understood (docs/deploying.md has the full story):

* a **scheduled event** (an EventBridge rule's ``"detail-type": "Scheduled Event"``) runs the
  project's tasks, or the ones listed in ``detail.tasks``, like ``sluicegate run`` with
  ``--max-runtime`` set to the time the invocation has left minus a safety margin. What does
  not fit stays pending for the next invocation. A blocks task runs the blocks that ended since
  the newest one on its ledger, as ``sluicegate blocks TASK --time-max now`` would. A task that
  cannot run (its request refused, a task-level error) is reported in its summary and does not
  stop the others; when none ran, the invocation fails (raises) after its log line.
* an **SQS event** runs each record's body as one export request (Bridge v1 JSON), like
  ``sluicegate request``, on the incremental task named by ``SLUICEGATE_TASK`` (or the only
  one). Records that fail are returned in SQS's partial batch response, so one bad message
  never makes the others run again. A malformed message is reported as failed too: it can
  never succeed, and reporting it is what lets the queue's redrive policy move it to the
  dead-letter queue, where it can be read, instead of being deleted unseen.

Settings come from the environment: ``SLUICEGATE_PROJECT`` (the project folder, default
``$LAMBDA_TASK_ROOT/project``), ``SLUICEGATE_LAMBDA_MARGIN`` (seconds kept free before the
Lambda time limit, default 30), ``SLUICEGATE_TASK`` (SQS only), and every override that
``sluicegate.toml`` accepts (``SLUICEGATE_SECTION__KEY``, the OpenAQ exporter's names).

Every run logs one JSON line to stdout, which Lambda sends to CloudWatch Logs.

This module uses only the stable API: ``load_project``, ``run``, ``RunOptions``,
``export_request.load_request`` and ``operations.incremental_task``; a scheduled event's blocks
tasks, ``block_requests.scheduled_request`` and ``block_requests.refused`` on
``operations.ledger_of``; and, as the command line does,
``options.prefer_system_allocator`` on import.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import ConfigError, RunOptions, SluicegateError, UsageError, load_project, run
from .block_requests import refused, scheduled_request
from .export_request import load_request
from .operations import incremental_task, ledger_of
from .options import TaskSummary, prefer_system_allocator

prefer_system_allocator()  # before the first run imports pyarrow

DEFAULT_MARGIN = 30.0  # seconds: releasing claims, closing connections and returning must fit in it
MARGIN_ENV = "SLUICEGATE_LAMBDA_MARGIN"
SUMMARY_KEYS = ("task", "exported", "unchanged", "failed", "released", "lost", "rows", "bytes", "seconds")
MAX_LOGGED_ERRORS = 5
# A URL's password (scheme://user:password@host): hidden in the text of unexpected exceptions.
_URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)


class LambdaContext(Protocol):
    """The part of Lambda's context object the handler uses."""

    aws_request_id: str
    function_name: str

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before Lambda stops the invocation."""
        ...


@dataclass(frozen=True, kw_only=True)
class LambdaSettings:
    """The handler's own settings, read from the environment at each invocation."""

    project_dir: Path
    margin: float
    task: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LambdaSettings:
        """Read ``SLUICEGATE_PROJECT``, ``SLUICEGATE_LAMBDA_MARGIN`` and ``SLUICEGATE_TASK``."""
        root = Path(env.get("LAMBDA_TASK_ROOT") or "/var/task")
        return cls(
            project_dir=Path(env.get("SLUICEGATE_PROJECT") or root / "project"),
            margin=parse_margin(env.get(MARGIN_ENV)),
            task=env.get("SLUICEGATE_TASK") or None,
        )


def parse_margin(value: str | None) -> float:
    """Seconds from ``SLUICEGATE_LAMBDA_MARGIN``: ``30``, ``30s``, ``1.5m`` (default 30)."""
    if value is None or not value.strip():
        return DEFAULT_MARGIN
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", value)
    if match is None:
        raise ConfigError(
            f"{MARGIN_ENV}={value!r} is not a duration; use seconds such as 30, or 30s, 500ms, 1m"
        )
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2) or "s"]
    return float(match.group(1)) * scale


def handler(event: Mapping[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Run a scheduled event or an SQS batch; see the module docstring.

    Returns, for a scheduled event, ``{"ok": bool, "tasks": [summary, ...]}``; for an SQS
    event, ``{"batchItemFailures": [{"itemIdentifier": messageId}, ...]}``. Raises
    :class:`UsageError` for an event it does not understand, :class:`ConfigError` for a
    bad setting, and for a scheduled event none of whose tasks ran, the error that stopped
    them (each task's, named), so that the invocation fails visibly.
    """
    started = time.monotonic()
    remaining = context.get_remaining_time_in_millis() / 1000
    env = os.environ
    if _is_sqs(event):
        return _handle_sqs(event, context, env, started, remaining)
    if _is_scheduled(event):
        return _handle_scheduled(event, context, env, started, remaining)
    keys = ", ".join(sorted(event)) if isinstance(event, Mapping) else type(event).__name__
    raise UsageError(
        f"sluicegate.aws_lambda.handler does not know this event (keys: {keys}); it takes an "
        "EventBridge scheduled event (detail-type 'Scheduled Event') or an SQS event (Records)"
    )


# ---------------------------------------------------------------------------- scheduled


def _is_scheduled(event: Mapping[str, Any]) -> bool:
    return isinstance(event, Mapping) and event.get("detail-type") == "Scheduled Event"


def _scheduled_tasks(event: Mapping[str, Any]) -> list[str]:
    """The task names in ``detail.tasks`` (empty: all tasks)."""
    detail = event.get("detail")
    detail = {} if detail is None else detail
    if not isinstance(detail, Mapping):
        raise UsageError(f"the scheduled event's detail must be an object, not {detail!r}")
    unknown = sorted(set(detail) - {"tasks"})
    if unknown:
        raise UsageError(
            f"the scheduled event's detail has {', '.join(map(repr, unknown))}; "
            'only "tasks" (a list of task names) is accepted'
        )
    tasks = detail.get("tasks")
    tasks = [] if tasks is None else tasks  # "", 0, false or {} ran every task, as an empty list does
    if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
        raise UsageError(f'the scheduled event\'s detail "tasks" must be a list of task names, not {tasks!r}')
    return tasks


def _handle_scheduled(
    event: Mapping[str, Any], context: LambdaContext, env: Mapping[str, str], started: float, remaining: float
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "sluicegate": "scheduled",
        **_invocation(context),
        "remaining_s": round(remaining, 3),
    }
    try:
        settings = LambdaSettings.from_env(env)
        names = _scheduled_tasks(event)
        line["tasks"] = names or "all"
        budget = remaining - settings.margin
        line["max_runtime_s"] = round(budget, 3)
        if budget <= 0:
            raise ConfigError(
                f"the invocation had {remaining:.1f} s left at its start, not more than {MARGIN_ENV}="
                f"{settings.margin:g} s; raise the function's timeout or lower the margin"
            )
        project = load_project(settings.project_dir, env)
        outcome = _run_scheduled(project, names, RunOptions(max_runtime=budget, started=started))
    except Exception as exc:  # logged, then raised: the invocation fails and Lambda counts an error
        _log({**line, "ok": False, "error": _error_text(exc), "seconds": _since(started)})
        raise
    out = [_summary(s) for s in outcome.summaries]
    problems = _problems(project, names)
    ok = all(s["ok"] for s in out) and not problems
    _log({**line, "ok": ok, "seconds": _since(started), "summaries": out, **problems})
    if (failure := outcome.none_ran(problems.get("problems", []))) is not None:
        raise failure  # logged above, with every task's summary
    return {"ok": ok, "tasks": out, **problems}


@dataclass
class _Outcome:
    """The summaries of a scheduled event's tasks, one per task, and what stopped those that could not
    run: a task's refused request, or its run's error, is that task's, and the others go on."""

    summaries: list[TaskSummary] = dataclasses.field(default_factory=list)
    raised: dict[str, Exception] = dataclasses.field(default_factory=dict)

    def run(self, project: Any, names: Sequence[str], options: RunOptions) -> None:
        """Run ``names`` in one run; an error it raises (not a task's, which its summary holds) is
        each of theirs."""
        try:
            self.summaries += run(project, list(names), options)
        except Exception as exc:  # the boundary for these tasks: in their summaries, and logged
            self.failed(names, exc)

    def failed(self, names: Sequence[str], exc: Exception) -> None:
        """``names`` could not run because of ``exc``: their summaries say it (a bug: its traceback)."""
        config = isinstance(exc, ConfigError | UsageError)
        for name in names:
            self.raised[name] = exc
            self.summaries.append(TaskSummary(task=name, task_errors=[_error_text(exc)], config_error=config))

    def none_ran(self, problems: Sequence[Mapping[str, str]]) -> Exception | None:
        """What the invocation raises when every task failed (a task-level error, a refused request, a
        folder that did not load): nothing ran, and Lambda must count an error. None when one ran."""
        failed = [(s.task, s.task_errors[0]) for s in self.summaries if s.task_errors]
        if not failed or len(failed) < len(self.summaries):
            return None
        causes = {(type(e), str(e)): e for e in self.raised.values()}
        if not problems and len(causes) == 1 and len(self.raised) == len(failed):
            return next(iter(causes.values()))  # one cause, such as the ledger out of reach: as raised
        failed += [(p["task"], p["error"]) for p in problems]
        config = all(s.config_error for s in self.summaries)
        each = "; ".join(f"task {task}: {error}" for task, error in failed)
        kind = ConfigError if config else SluicegateError
        return kind(f"no task of the scheduled event ran, each failed: {each}")


def _run_scheduled(project: Any, names: Sequence[str], options: RunOptions) -> _Outcome:
    """Run the tasks: the others in one run, then each blocks task with the blocks that ended by now
    since its ledger's newest (a run without a request made none, so an hourly event ran nothing);
    a blocks task with no settled block has nothing to do, an empty summary. A task that cannot run
    (its request refused, recorded on the ledger as its error) does not stop the others."""
    tasks = project.runnable(list(names))  # a broken one named is skipped, in the result's problems
    if not tasks:
        run(project, [], options)  # raises: no tasks to run, add a task folder
    blocks = [t for t in tasks if t.kind == "blocks"]
    outcome = _Outcome()
    if others := [t.name for t in tasks if t.kind != "blocks"]:
        outcome.run(project, others, options)
    requests = _blocks_requests(project, blocks, outcome)
    for name, request in requests.items():
        if request is None:
            outcome.summaries.append(TaskSummary(task=name))
        else:
            outcome.run(project, [name], dataclasses.replace(options, blocks=request))
    order = {t.name: i for i, t in enumerate(tasks)}
    outcome.summaries.sort(key=lambda s: order[s.task])  # as named, whatever stopped when
    return outcome


def _blocks_requests(project: Any, blocks: Sequence[Any], outcome: _Outcome) -> dict[str, Any]:
    """Each blocks task's request for now (None: no block has settled). One refused (a keys_sql the
    source refuses) is that task's failure, in ``outcome`` and on the ledger; the others are asked."""
    now = dt.datetime.now(dt.UTC)
    requests: dict[str, Any] = {}
    try:
        with ledger_of(project) as ledger:
            for task in blocks:
                try:
                    requests[task.name] = scheduled_request(project, task, now, ledger)
                except SluicegateError as exc:
                    refused(ledger, task, exc)
                    outcome.failed([task.name], exc)
                except Exception as exc:  # a bug: that task's, in its summary with the traceback
                    outcome.failed([task.name], exc)
    except SluicegateError as exc:  # the ledger out of reach: the tasks not yet asked cannot run
        left = [t.name for t in blocks if t.name not in requests and t.name not in outcome.raised]
        outcome.failed(left, exc)
    return requests


# ---------------------------------------------------------------------------- SQS


def _is_sqs(event: Mapping[str, Any]) -> bool:
    records = event.get("Records") if isinstance(event, Mapping) else None
    return (
        isinstance(records, list)
        and bool(records)
        and all(isinstance(r, Mapping) and r.get("eventSource") == "aws:sqs" for r in records)
    )


def _handle_sqs(
    event: Mapping[str, Any], context: LambdaContext, env: Mapping[str, str], started: float, remaining: float
) -> dict[str, Any]:
    """Run each record's request; return the ids of the records to leave on the queue."""
    line: dict[str, Any] = {"sluicegate": "sqs", **_invocation(context)}
    try:  # a broken setting fails the whole invocation, loudly, before any record is touched
        settings = LambdaSettings.from_env(env)
        project = load_project(settings.project_dir, env)
        task = _incremental_task(project, settings.task)
    except Exception as exc:
        _log({**line, "ok": False, "error": _error_text(exc), "seconds": _since(started)})
        raise
    failures: list[dict[str, str]] = []
    for index, record in enumerate(event["Records"]):
        where = {**line, "task": task, **_where(record, index)}
        left = remaining - (time.monotonic() - started) - settings.margin
        # A FIFO queue must not see a later message succeed after an earlier one failed.
        fifo_blocked = bool(failures) and str(record.get("eventSourceARN", "")).endswith(".fifo")
        if left <= 0 or fifo_blocked:
            reason = (
                "not attempted: an earlier message of this FIFO batch failed"
                if fifo_blocked
                else f"not attempted: less than {MARGIN_ENV}={settings.margin:g} s left"
            )
            _log({**where, "ok": False, "error": reason})
            ok = False
        else:
            ok = _run_record(record, where, project, task, time.monotonic(), left)
        if not ok:
            failures.append({"itemIdentifier": str(record.get("messageId", ""))})
    return {"batchItemFailures": failures}


def _incremental_task(project: Any, name: str | None) -> str:
    """The name of the task that runs requests: ``SLUICEGATE_TASK``, or the only incremental task."""
    try:
        return str(incremental_task(project, name).name)
    except UsageError as exc:  # its message speaks of --task, the CLI's option
        raise ConfigError(
            f"{exc}; in Lambda, name the task with the environment variable SLUICEGATE_TASK"
        ) from None


def _where(record: Mapping[str, Any], index: int) -> dict[str, Any]:
    attributes = record.get("attributes")
    count = attributes.get("ApproximateReceiveCount") if isinstance(attributes, Mapping) else None
    return {"message_id": record.get("messageId"), "record": index, "receive_count": count}


def _run_record(
    record: Mapping[str, Any], line: dict[str, Any], project: Any, task: str, started: float, budget: float
) -> bool:
    """Run one record's request and log it; True when it may be deleted from the queue."""
    body = record.get("body")
    try:
        if not isinstance(body, str):
            raise UsageError(f"the SQS record has no text body (body: {body!r})")
        request = load_request(body)
    except UsageError as exc:  # a malformed message: it will never succeed (see the module docstring)
        _log({**line, "ok": False, "malformed": True, "error": _clean(str(exc))})
        return False
    try:
        [summary] = run(project, [task], RunOptions(max_runtime=budget, started=started, request=request))
    except Exception as exc:
        # This is the boundary that decides for one record: the failure is reported to SQS,
        # which delivers the message again (and in the end to the dead-letter queue), and the
        # other records of the batch go on. Nothing is swallowed: the error is logged here.
        _log({**line, "ok": False, "error": _error_text(exc), "seconds": _since(started)})
        return False
    out = _summary(summary)
    # Windows released at the time limit (or whose lease was lost) are not done: the message
    # must come back for them.
    done = bool(out["ok"] and not out.get("released") and not out.get("lost"))
    _log({**line, "ok": done, "seconds": _since(started), "summary": out})
    return done


# ---------------------------------------------------------------------------- helpers


def _invocation(context: LambdaContext) -> dict[str, Any]:
    return {
        "request_id": getattr(context, "aws_request_id", None),
        "function": getattr(context, "function_name", None),
    }


def _summary(summary: Any) -> dict[str, Any]:
    """The compact, JSON-ready part of a task summary that goes into the log line."""
    full = summary.as_dict()
    out = {k: full[k] for k in SUMMARY_KEYS if k in full}
    out["errors"] = [_clean(e) for e in summary.errors[:MAX_LOGGED_ERRORS]]
    out["task_errors"] = [_clean(e) for e in summary.task_errors]
    out["ok"] = not (summary.failed or summary.task_errors)
    return out


def _problems(project: Any, names: Sequence[str]) -> dict[str, Any]:
    """Task folders that did not load (and so did not run), as ``{"problems": [...]}`` or ``{}``."""
    broken = [
        {"task": p.name, "error": _clean(p.message)}
        for p in getattr(project, "problems", ())
        if not names or p.name in names
    ]
    return {"problems": broken} if broken else {}


def _error_text(exc: BaseException) -> str:
    """A sluicegate error's sentence, or the traceback of anything else (a bug), passwords hidden."""
    text = str(exc) if isinstance(exc, SluicegateError) else "".join(traceback.format_exception(exc))
    return _clean(text)


def _clean(text: str) -> str:
    return _URL_PASSWORD.sub(r"\1***@", text)


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _log(line: Mapping[str, Any]) -> None:
    """One JSON line on stdout: Lambda sends it to CloudWatch Logs, where Logs Insights can query it."""
    sys.stdout.write(json.dumps(line, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()
