"""Which destination a task exports to, so two projects sharing a ledger do not take each other's work.

The ledger keys partitions, watermarks and blocks by task name only: two projects with their own
destinations but one ledger (one SQLite file, or one PostgreSQL schema) and a task of the same
name claimed each other's partitions, and one project's re-export went to the other's
destination unseen. So a destination holds a random id (``_sluicegate/destination-id``, written
once, where no object is yet), and the ledger's meta table records per task the id of the
destination it exports to (at the task's first run). A run whose destination holds another id,
or none, than its tasks record refuses, until ``run --move-destination`` moves them on purpose.
Workers of one project that reach the destination by other credentials or mount paths read the
same id. Cost: one query and one read per run; the first run also writes the id and records it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Sequence

from .db import POSTGRESQL
from .destinations import Destination
from .drivers import Context
from .exceptions import ConfigError, NotFound, PermissionDenied, SluicegateError, TerminalError
from .ledger import Ledger
from .masking import mask_url
from .options import RunOptions
from .specs import Project, Settings, TaskBase

log = logging.getLogger("sluicegate")

MARKER = "_sluicegate/destination-id"  # not under _manifests/, which a lifecycle rule may expire


def meta_key(task: str) -> str:
    """The ledger meta key of a task's destination (a hash: MariaDB's keys are 64 characters)."""
    return "destination:" + hashlib.sha256(task.encode()).hexdigest()[:40]


def check_destination(ctx: Context, tasks: Sequence[TaskBase], options: RunOptions) -> None:
    """ConfigError when a task's ledger records another destination than the project's; record
    it for tasks that record none (and all of them with ``options.move_destination``), but for a
    dry run. A ledger or destination that cannot be read, or a role without the owner's grants on
    the ledger, skips the check with one warning naming the id file."""
    keys = {t.name: meta_key(t.name) for t in tasks}
    try:
        recorded = ctx.ledger.found.destinations()
        here = read_id(ctx.destination)
        elsewhere = {
            n: recorded[k] for n, k in keys.items() if k in recorded and recorded[k].split(" ")[0] != here
        }
        if not elsewhere or options.move_destination:
            unbound = {
                n: k for n, k in keys.items() if k not in recorded or recorded[k].split(" ")[0] != here
            }
            if unbound and not options.dry_run:
                _bind(ctx, unbound, here, move=options.move_destination)
            return
    except ConfigError:  # an id file that holds no id: not an outage, and no check without it
        raise
    except SluicegateError as exc:  # an outage (the tasks report it), or a role without the owner's
        # grants on the ledger's meta table: warned, not refused, as `sluicegate grants` grants none
        _skipped(ctx, exc)
        return
    task, value = sorted(elsewhere.items())[0]
    raise _refusal(ctx.project.settings, ctx.ledger, task, value, here)


def unbound_notes(project: Project, ledger: Ledger, destination: Destination) -> list[str]:
    """For ``check``: one line per task whose ledger records no destination yet (its first run binds
    it: information, not a problem). None when the ledger cannot be read (check reports that)."""
    try:
        recorded = ledger.found.destinations()
        unbound = sorted(name for name in project.tasks if meta_key(name) not in recorded)
        here = read_id(destination) if unbound else None
    except SluicegateError:
        return []
    shown = mask_url(project.settings.destination.url)
    how = f"records the id {destination.display(MARKER)} holds" if here else f"writes {MARKER} there"
    return [
        f"task {name} is not bound to a destination yet (the ledger records none for it): its first "
        f"run binds it to {shown} (it {how}), so check [destination] url first"
        for name in unbound
    ]


def bound_problems(project: Project, ledger: Ledger, destination: Destination) -> list[str]:
    """For ``check``: why a run refuses, when the ledger records for a task an id that
    ``destination`` does not hold (another, or none: its id file was deleted, by a lifecycle rule
    or by emptying the destination), or its id file holds no id. None when the ledger or the
    destination cannot be read (check reports that)."""
    try:
        recorded = ledger.found.destinations()
        bound = {n: recorded[meta_key(n)] for n in sorted(project.tasks) if meta_key(n) in recorded}
        here = read_id(destination)
    except ConfigError as exc:  # an id file holding no id: every run refuses
        return [str(exc)]
    except SluicegateError:
        return []
    elsewhere = {n: v for n, v in bound.items() if v.split(" ")[0] != here}
    if here is not None:  # another project's destination, or this one's tasks moved away from it
        return [str(_refusal(project.settings, ledger, n, v, here)) for n, v in list(elsewhere.items())[:1]]
    s, gone = project.settings, {v: [n for n, w in elsewhere.items() if w == v] for v in elsewhere.values()}
    return [
        f"{destination.display(MARKER)} is missing, while the ledger at {mask_url(s.ledger_url)} records "
        f"that {_tasks(names)} to the destination {value.partition(' ')[2]} with the id "
        f"{value.split(' ')[0]}, so every run refuses: if {mask_url(s.destination.url)} is that "
        "destination (its id file deleted by a lifecycle rule, or the destination emptied), run "
        "`sluicegate run --move-destination` once to write a new id; if not, fix [destination] url "
        f"in {s.root / 'sluicegate.toml'}"
        for value, names in gone.items()
    ]


def _tasks(names: list[str]) -> str:
    return f"task {names[0]} exports" if len(names) == 1 else f"tasks {', '.join(names)} export"


def _skipped(ctx: Context, exc: SluicegateError) -> None:
    """One warning: the run goes on without the two-projects check."""
    log.warning(
        "could not check that the ledger's tasks export to this destination (%s), so the check that "
        "no other project shares this ledger is off for this run: %s",
        ctx.destination.display(MARKER),
        exc,
    )


def _bind(ctx: Context, names: dict[str, str], here: str | None, *, move: bool) -> None:
    """Record the destination's id (written now when it holds none) for the tasks ``names`` (to
    their meta keys)."""
    written, keys = here or write_id(ctx.destination), list(names.values())
    store = ctx.ledger.found
    value = f"{written} {mask_url(ctx.project.settings.destination.url)}"[:255]
    (store.move_destination if move else store.bind_destination)(keys, value)
    if move:
        return
    # Another worker's first run bound its id first: where the exclusive write is checked, then
    # written (fsspec; S3 without conditional writes), ours may have replaced its id in the
    # destination. Put back the one the ledger records, or every later run refuses; but only for
    # the same URL: another project's first run at once refuses now, before it takes partitions.
    bound = {k: v for k, v in store.destinations().items() if k in keys and v.split(" ")[0] != written}
    won = {v.partition(" ") for v in bound.values()}
    if here is None and len(won) == 1 and (first := won.pop())[2] == value.partition(" ")[2]:
        write_id(ctx.destination, first[0])
    elif bound:
        task = next(n for n, k in sorted(names.items()) if k in bound)
        raise _refusal(ctx.project.settings, ctx.ledger, task, bound[names[task]], written)


def _refusal(s: Settings, ledger: Ledger, task: str, value: str, here: str | None) -> ConfigError:
    schema = f" (schema {s.ledger_schema})" if ledger.dialect is POSTGRESQL else ""
    known, _, recorded = value.partition(" ")
    # A destination without an id is a new one, or one whose _sluicegate/ was deleted; one with
    # another id may have the same URL (one bucket name on two endpoints): the ids tell them apart.
    holds = (
        f" (which holds no {MARKER}: new, or emptied)"
        if here is None
        else f" (whose {MARKER} holds the id {here}, not {known})"
    )
    return ConfigError(
        f"the ledger at {mask_url(s.ledger_url)}{schema} records that task {task} exports to the "
        f"destination {recorded}, not to {mask_url(s.destination.url)}{holds} of "
        f"{s.root / 'sluicegate.toml'}, so another project with a task of that name may share this "
        "ledger and a run would take its partitions: give each project a ledger of its own ([ledger] "
        "url, or [ledger] schema on PostgreSQL), or run with --move-destination to move the task's "
        "exports here on purpose"
    )


def read_id(destination: Destination) -> str | None:
    """The id written into ``destination``, or None when it holds none yet."""
    try:
        held = destination.read(MARKER)
    except PermissionDenied:  # there, or not, but not to be read: not a destination without an id
        raise
    except NotFound:  # not one that cannot be read (refused credentials, no bucket): that is no answer
        return None
    # Empty, or overwritten: taken for an id, an empty one matched any other empty one.
    if not re.fullmatch(rb"[0-9a-f]{32}\s*", held):
        raise ConfigError(
            f"{destination.display(MARKER)} holds no sluicegate destination id (it is empty or holds "
            "something else): delete it, then run once with --move-destination"
        )
    return held.decode("ascii").strip()


def write_id(destination: Destination, given: str | None = None) -> str:
    """Write a new id into ``destination`` where none is yet (``given``: that id, over any); the id
    it holds then."""
    staged = destination.stage(MARKER)
    if given is None:  # two workers' first runs at once: the first stays
        staged.condition, staged.exclusive = "*", True
    try:
        staged.file.write((given or uuid.uuid4().hex).encode() + b"\n")
        destination.publish(staged)
        destination.sync([staged])
    except BaseException:
        destination.discard(staged)
        raise
    found = read_id(destination)
    if found is None:
        raise TerminalError(f"{destination.display(MARKER)} was written but cannot be read back")
    return found
