"""Project skeletons (``sluicegate init``) and the self-contained demo (``sluicegate demo``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .exceptions import UsageError

EXAMPLES = ("openaq", "mds", "airmax")


def init_project(
    folder: Path, *, example: str = "openaq", force: bool = False, source_url: str | None = None
) -> list[Path]:
    """Copy the ``example`` project skeleton into ``folder``; return the files written.

    ``source_url`` replaces the example's ``[source] url`` in the new ``sluicegate.toml``."""
    if example not in EXAMPLES:
        raise UsageError(f"--example {example!r} is not known; use one of: {', '.join(EXAMPLES)}")
    try:  # a folder under a file, or one this user may not write: one line, not a traceback
        written = _copy_example(example, folder, force=force)
        if source_url:
            _set_source(folder / "sluicegate.toml", source_url)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename and Path(exc.filename) != folder else ""
        raise UsageError(f"cannot write the project into {folder}: {where}{exc.strerror or exc}") from exc
    return written


def _copy_example(example: str, folder: Path, *, force: bool) -> list[Path]:
    """Copy the example's files; without ``force``, refuse before writing any if one exists
    (a select.sql of the user's own was overwritten when only sluicegate.toml was missing)."""
    written = []
    root = resources.files(__package__).joinpath("templates", example)
    with resources.as_file(root) as src:
        sources = [p for p in sorted(Path(src).rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
        targets = [folder / path.relative_to(src) for path in sources]
        if not force and (there := next((t for t in targets if t.exists() or t.is_symlink()), None)):
            raise UsageError(f"{there} already exists; pick an empty folder or pass --force to overwrite it")
        folder.mkdir(parents=True, exist_ok=True)
        for path, target in zip(sources, targets, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            written.append(target)
    return written


def _set_source(toml: Path, url: str) -> None:
    """Write ``url`` as the first ``url = ...`` line after ``[source]`` (a TOML basic string)."""
    lines = toml.read_text().splitlines(keepends=True)
    start = lines.index("[source]\n")
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("url ="):
            lines[i] = f"url = {json.dumps(url)}\n"
            break
    toml.write_text("".join(lines))


@dataclass(frozen=True, kw_only=True)
class DemoSetup:
    """What ``demo`` built before exporting."""

    folder: Path
    database: Path
    rows: int
    locations: int


def build_demo(folder: Path, *, rows: int = 150_000, locations: int = 300, force: bool = False) -> DemoSetup:
    """Create the OpenAQ example in ``folder`` with a generated SQLite database and triggers."""
    from .config import load_project
    from .generate import create_schema, generate
    from .operations import install

    database = folder / "measurements.db"
    if database.exists() and not force:
        raise UsageError(
            f"{database} already exists; the demo folder is a project now: export with 'sluicegate run', "
            "or pass --force to rebuild it"
        )
    if force:
        for path in (database, folder / "measurements.db-wal", folder / "measurements.db-shm"):
            path.unlink(missing_ok=True)
        shutil.rmtree(folder / "exports", ignore_errors=True)
    init_project(folder, force=force)  # without --force, a project there is not overwritten
    url = f"sqlite:///{database.resolve()}"
    create_schema(url)
    install(load_project(folder, {}))  # creates the ledger and the capture triggers
    result = generate(url, rows=rows, locations=locations)
    return DemoSetup(folder=folder, database=database, rows=result.rows, locations=result.locations)
