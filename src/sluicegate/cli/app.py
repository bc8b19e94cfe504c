"""The ``sluicegate`` command group and what every command shares: options, errors, the project.

Exit codes: 0 ok; 1 some units failed (the rest were exported); 2 bad configuration or
usage. User errors print one line without a traceback; ``-v`` shows the traceback.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import logging
import os
import re
import shlex
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..config import Project, load_project, parse_duration
from ..exceptions import ConfigError, SluicegateError, UsageError
from ..masking import ScrubFilter, mask_url, scrub
from ..options import prefer_system_allocator

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("sluicegate")

ENV_HELP = (
    "Settings come from sluicegate.toml; environment variables SLUICEGATE_SECTION__KEY override them "
    "(e.g. SLUICEGATE_SOURCE__URL, SLUICEGATE_DESTINATION__URL, SLUICEGATE_DEFAULTS__LIMIT). The OpenAQ "
    "exporter's LIMIT, WRITE_FILE_LOCATION, WRITE_FILE_FORMAT, OPEN_DATA_BUCKET, LOCAL_SAVE_DIRECTORY, "
    "LOG_LEVEL and DATABASE_* are accepted too."
)


def process_started() -> float:
    """``time.monotonic()`` at the moment this process started (Linux), else now.

    ``--max-runtime`` counts from there, so interpreter start-up and imports are inside the
    budget, as they are inside a Lambda's or a cron job's time limit.
    """
    now = time.monotonic()
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        age = uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - max(0.0, age)


def invoked_as() -> str:
    """The command as the user can type it again: ``sluicegate`` when that is on PATH, else the
    path they used (``.venv/bin/sluicegate`` from the project checkout)."""
    import shutil

    argv0 = Path(sys.argv[0])
    on_path = shutil.which("sluicegate")
    if on_path and argv0.exists() and Path(on_path).resolve() == argv0.resolve():
        return "sluicegate"
    try:
        return shlex.quote(str(argv0.resolve().relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(argv0.resolve())) if argv0.name == "sluicegate" else "sluicegate"


def on_project(folder: str | Path) -> str:
    """``sluicegate -C FOLDER`` as the user can paste it into a shell (a folder with a space quoted)."""
    return f"{invoked_as()} -C {shlex.quote(str(folder))}"


def quoted(command: str) -> str:
    """``command`` in quotes within a sentence: single ones unless the command has its own."""
    return f'"{command}"' if "'" in command else f"'{command}'"


class _ReaderMayLeave(io.RawIOBase):
    """Standard output into a pipe whose reader may leave (``sluicegate status | head -1``): what is
    written after it left goes nowhere, where a BrokenPipeError ended the command with exit code 1
    (click's, whatever the command's own) and left its last lines unwritten to stderr too."""

    def __init__(self, fd: int) -> None:
        self.fd, self.gone = fd, False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def write(self, data: Any) -> int:
        if not self.gone:
            try:
                return os.write(self.fd, data)
            except BrokenPipeError:
                self.gone = True
        return len(data)


def quiet_when_the_reader_leaves() -> None:
    """Standard output and error into a pipe: ignore the reader leaving (see :class:`_ReaderMayLeave`).
    Both: ``2>&1 | head`` puts an error's line (exit 2) in the pipe the reader left."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            fd = stream.fileno()
            piped = stat.S_ISFIFO(os.fstat(fd).st_mode)
        except (AttributeError, OSError, ValueError):  # not a file (a test's capture): as it is
            continue
        if piped:
            stream.flush()
            raw = io.BufferedWriter(_ReaderMayLeave(fd))
            wrapped = io.TextIOWrapper(
                raw, encoding=stream.encoding, errors=stream.errors, line_buffering=stream.line_buffering
            )
            setattr(sys, name, wrapped)


class CliState:
    verbose: bool = False
    project_dir: Path = Path(".")
    urls: tuple[str, ...] = ()  # the project's database URLs, whose secrets an error may repeat


_HINTED = re.compile(r"(?<=['`\"(])sluicegate (?=([a-z]+)\b)")  # followed by a command's name


def _hint(match: re.Match[str], folder: Path) -> str:
    """``sluicegate `` of a hint to run a command (not init or demo: these name their folder), with
    ``-C FOLDER``; not of a value quoted in a message (a partition key "sluicegate users")."""
    if match[1] in ("init", "demo") or match[1] not in main.commands:
        return match[0]
    return f"sluicegate -C {shlex.quote(str(folder))} "


def typed_here(text: str, folder: Path | None = None) -> str:
    """``text`` with each quoted ``sluicegate COMMAND`` as the user can type it again: with
    ``-C FOLDER`` when the project is another folder than the current one. A cron job's
    ``sluicegate -C /srv/exports run`` that says to run 'sluicegate backfill openaq' means
    'sluicegate -C /srv/exports backfill openaq'; typed as said, it finds no project."""
    if folder is None:
        ctx = click.get_current_context(silent=True)
        state = ctx.find_object(CliState) if ctx else None
        folder = state.project_dir if state else Path(".")
    try:
        if folder.resolve() == Path.cwd().resolve():
            return text
    except (OSError, RuntimeError):  # a -C folder that is a symlink loop (RuntimeError on 3.11)
        return text
    return _HINTED.sub(lambda m: _hint(m, folder), text)


class _TypedHere(logging.Filter):
    """A logging filter that gives a warning's hints the project's ``-C FOLDER`` (:func:`typed_here`)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        typed = typed_here(message, self.folder)
        if typed != message:
            record.msg, record.args = typed, None
        return True


def fail(exc: BaseException, verbose: bool, urls: tuple[str, ...] = ()) -> None:
    if verbose:  # the driver's own exception, chained, may repeat a password: masked with the URLs
        import traceback

        click.echo(scrub("".join(traceback.format_exception(exc)), *urls), err=True, nl=False)
    # A transient error says "will retry" for the partition it failed; the command ends here.
    message = typed_here(scrub(str(exc), *urls).removesuffix("; will retry"))
    click.echo(f"sluicegate: error: {message}", err=True)
    sys.exit(2 if isinstance(exc, ConfigError | UsageError) else 1)


def handled(func: F) -> F:
    """Turn sluicegate errors into one line on stderr and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = click.get_current_context().find_object(CliState) or CliState()
        try:
            return func(*args, **kwargs)
        except SluicegateError as exc:
            fail(exc, state.verbose, state.urls)
        return None

    return wrapper  # type: ignore[return-value]


def load() -> Project:
    state = click.get_current_context().find_object(CliState) or CliState()
    project = load_project(state.project_dir, os.environ)
    state.urls = (project.settings.source_url, project.settings.ledger_url)
    level = logging.DEBUG if state.verbose else getattr(logging, project.settings.log_level, logging.WARNING)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # driver logs may echo a connection string
        handler.addFilter(ScrubFilter(project.settings.source_url, project.settings.ledger_url))
        handler.addFilter(_TypedHere(state.project_dir))
    log.debug(
        "source %s, ledger %s", mask_url(project.settings.source_url), mask_url(project.settings.ledger_url)
    )
    return project


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def duration(_ctx: Any, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    where = f"--{param.name.replace('_', '-') if param.name else 'duration'}"
    try:
        seconds = parse_duration(value, where=where)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds <= 0:  # `--every 0s` ran once; `--max-runtime 0s`, nothing
        raise click.BadParameter(f"{where} {value!r}: give a duration longer than 0s, such as 30s")
    return seconds


def timestamp(_ctx: Any, param: click.Parameter, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time such as 2024-05-01T00:00:00Z") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class _Main(click.Group):
    """The group: a global option given after the command (`run -C demo`) is named as such."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.NoSuchOption as exc:
            if exc.option_name in ("-C", "--project", "-v", "--verbose"):
                sub = ctx.invoked_subcommand or "COMMAND"
                hint = "-C FOLDER" if exc.option_name in ("-C", "--project") else "-v"
                raise click.UsageError(
                    f"{exc.option_name} is a global option and goes before the command: "
                    f"sluicegate {hint} {sub} ...",
                    exc.ctx,
                ) from None
            raise


@click.group(cls=_Main, epilog=ENV_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C",
    "--project",
    "project_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    envvar="SLUICEGATE_PROJECT",
    show_envvar=True,
    help="The project folder (holding sluicegate.toml).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging, and tracebacks on errors.")
@click.version_option(package_name="sluicegate")
@click.pass_context
def main(ctx: click.Context, project_dir: Path, verbose: bool) -> None:
    """sluicegate: incremental, exactly-once exports from SQL databases to files."""
    prefer_system_allocator()
    quiet_when_the_reader_leaves()
    state = ctx.ensure_object(CliState)
    state.verbose = verbose
    state.project_dir = project_dir
