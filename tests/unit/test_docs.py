"""The docs stay in step with the code: every ``--help`` block of docs/cli.md is the real help."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _cli_help() -> object:
    spec = importlib.util.spec_from_file_location("cli_help", REPO / "scripts" / "cli_help.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_help_block_in_the_cli_reference_is_the_commands_help() -> None:
    cli_help = _cli_help()
    found = cli_help.blocks((REPO / "docs" / "cli.md").read_text())  # type: ignore[attr-defined]
    documented = {line for line, _, _ in found}
    assert "$ sluicegate backfill --help" in documented and len(documented) >= 19
    stale = [line for line, doc, real in found if doc != real]
    assert not stale, f"run 'python scripts/cli_help.py --write': {stale}"


def test_every_command_has_a_help_block() -> None:
    from sluicegate.cli import main

    cli_help = _cli_help()
    documented = {line for line, _, _ in cli_help.blocks((REPO / "docs" / "cli.md").read_text())}  # type: ignore[attr-defined]
    import click

    def lines(group: click.Group, prefix: str) -> list[str]:  # a group's subcommands too
        return [
            line
            for name, command in group.commands.items()
            for line in [f"{prefix} {name}"]
            + (lines(command, f"{prefix} {name}") if isinstance(command, click.Group) else [])
        ]

    commands = lines(main, "$ sluicegate")
    assert "$ sluicegate secret key" in commands
    missing = [line for line in commands if f"{line} --help" not in documented]
    assert not missing, f"docs/cli.md has no help block for: {missing}"


def test_every_code_block_of_the_docs_is_closed() -> None:
    """An unclosed fence in cli.md swallowed the next heading and kept a stale help block inside."""
    pages = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md", REPO / "bench" / "README.md"]
    for page in pages:
        fences = [line for line in page.read_text().splitlines() if line.lstrip().startswith("```")]
        closed = [f for i, f in enumerate(fences) if i % 2 == 1]
        assert len(fences) % 2 == 0, f"{page}: a code block is not closed"
        assert all(f.strip() == "```" for f in closed), f"{page}: a fence opens where one should close"


def test_the_module_map_names_every_module() -> None:
    """docs/architecture.md's module map is how a newcomer finds code; 13 modules had gone missing."""
    text = (REPO / "docs" / "architecture.md").read_text()
    table = text.split("## Module map", 1)[1].split("\n## ", 1)[0]
    package = REPO / "src" / "sluicegate"
    modules = sorted(p for p in package.rglob("*.py") if p.name != "__init__.py")
    assert len(modules) > 80
    missing = [str(p.relative_to(package)) for p in modules if f"{p.name}`" not in table]
    assert not missing, f"add these modules to the module map of docs/architecture.md: {missing}"


def _key_sets() -> dict[str, frozenset[str]]:
    """Every set of accepted keys (``KEYS``, ``SQS_KEYS``, ``SETTINGS_KEYS``'s sections, ...)."""
    import importlib
    import pkgutil

    import sluicegate

    found: dict[str, frozenset[str]] = {}
    for info in pkgutil.walk_packages(sluicegate.__path__, "sluicegate."):
        if info.name.startswith("sluicegate.service"):
            continue  # FastAPI: the service's bodies are documented by their OpenAPI schema
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if not name.endswith("KEYS") or name.startswith("_"):
                continue
            sets = value.items() if isinstance(value, dict) else [("", value)]
            for section, keys in sets:
                if isinstance(keys, (set, frozenset)):
                    found[f"{info.name}.{name}{'[' + section + ']' if section else ''}"] = frozenset(keys)
    return found


def test_every_configuration_key_is_documented() -> None:
    """A key sluicegate.toml or a task.toml accepts is a key users must be able to look up."""
    docs = "".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))
    forms = ("`{k}`", "`{k} ", "{k} =", "[{k}]", "] {k}`")
    sets = _key_sets()
    assert any("SETTINGS_KEYS" in name for name in sets) and any("SQS_KEYS" in name for name in sets)
    missing = sorted(
        f"{where}: {key}"
        for where, keys in sets.items()
        for key in keys
        if not any(form.format(k=key) in docs for form in forms)
    )
    assert not missing, f"document these keys in docs/ (tasks.md, the kind's page): {missing}"


def _documented_keys(section: str) -> dict[str, set[str]]:
    """The keys the first column of a reference table in ``section`` names, by table section
    (``""`` for top-level keys): ``[window] table`` is ``window``'s, ``[columns]`` a top-level key."""
    found: dict[str, set[str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell, table = line.split("|")[1], ""
        for name in re.findall(r"`([^`]+)`", cell):
            inner = re.fullmatch(r"\[(\w+)\](?: (\w+))?", name)
            if inner and inner.group(2):  # [window] table: the key of a section
                table, name = inner.groups()
            elif inner:  # [columns]: a section named as a top-level key
                name = inner.group(1)
            found.setdefault(table, set()).add(name)
    return found


def _page_section(text: str, heading: str) -> str:
    """The text under ``heading`` (a line of the page) up to the next heading of its level or above."""
    level = heading.split(" ", 1)[0]
    body = re.sub(r"\n```.*?\n```", "", text.split(f"\n{heading}\n", 1)[1], flags=re.S)  # no "# comment"
    return re.split(rf"\n#{{1,{len(level)}}} ", body, maxsplit=1)[0]


def test_the_documented_keys_of_each_kind_are_the_keys_it_accepts() -> None:
    """tasks.md's table of each kind names exactly the keys its loader accepts: a documented key
    that is refused (or an accepted one missing) sends a newcomer who trusts the table astray."""
    from sluicegate import sqs, tables
    from sluicegate.drivers import aggregate, archive, blocks, incremental, ingest, partitioned
    from sluicegate.drivers import partitioned_config as pc
    from sluicegate.settings_env import SETTINGS_KEYS

    text = (REPO / "docs" / "tasks.md").read_text()

    def keys(heading: str) -> dict[str, set[str]]:
        return _documented_keys(_page_section(text, heading))

    settings = keys("## `sluicegate.toml`")
    assert {s: settings.get(s, set()) for s in SETTINGS_KEYS if s != "testing"} == {
        s: set(k) for s, k in SETTINGS_KEYS.items() if s != "testing"
    }
    assert keys("### Top-level keys")[""] | {"time", "capture"} == partitioned.KEYS
    assert keys("### `[time]`")[""] == pc.TIME_KEYS
    assert keys("### `[capture]`")[""] == pc.CAPTURE_KEYS
    assert keys("## Incremental tasks")[""] == incremental.KEYS
    assert keys("## Archive tasks")[""] == archive.KEYS
    stage_table = _page_section(text, "## Blocks tasks").split("| stage | key |", 1)[0]
    assert _documented_keys(stage_table)[""] == blocks.KEYS
    aggregate_keys = keys("## Aggregate tasks")
    assert aggregate_keys[""] | {"window"} == aggregate.KEYS
    assert aggregate_keys["window"] == aggregate.WINDOW_KEYS
    assert keys("## Table sinks")[""] == tables.TARGET_KEYS
    ingest_keys = keys("## Ingest tasks")
    assert ingest_keys[""] | {"sqs"} == ingest.KEYS
    assert ingest_keys["sqs"] == sqs.SQS_KEYS


def test_every_blocks_stage_key_is_documented() -> None:
    """The stage table of tasks.md (and the sentence above it on type, callable and config)."""
    from sluicegate.drivers.blocks_config import STAGE_KEYS

    text = _page_section((REPO / "docs" / "tasks.md").read_text(), "## Blocks tasks")
    prose, table = text.split("| stage | key |", 1)
    common = {"type", "callable", "config"}
    assert all(f"`{k}`" in prose.rsplit("\n\n", 2)[-2] for k in common)
    for stage, accepted in STAGE_KEYS.items():
        rows = [line for line in table.splitlines() if line.startswith(f"| {stage} |")]
        documented = {k for row in rows for k in re.findall(r"`(\w+)`", row.split("|")[2])}
        assert documented | common == accepted, stage


def _env_names_read() -> set[str]:
    """The environment variables src/sluicegate names where it reads the environment: an
    ``env.get("X")``, ``os.environ["X"]``, ``envvar="X"``, ``"X" in env``, and the tuples and
    constants whose names end in ``_ENV``, ``_ENV_NAMES``."""
    import ast

    names: set[str] = set()
    envish = ("env", "environ")

    def is_env(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id in envish) or (
            isinstance(node, ast.Attribute) and node.attr in envish
        )

    def constants(node: ast.AST) -> set[str]:
        return {
            n.value
            for n in ast.walk(node)
            if isinstance(n, ast.Constant)
            and isinstance(n.value, str)
            and re.fullmatch(r"[A-Z][A-Z0-9_]+", n.value)
        }

    for path in (REPO / "src" / "sluicegate").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                if node.func.attr in ("get", "setdefault") and is_env(node.func.value):
                    names |= constants(node.args[0])
            elif isinstance(node, ast.Subscript) and is_env(node.value):
                names |= constants(node.slice)
            elif isinstance(node, ast.keyword) and node.arg == "envvar":
                names |= constants(node.value)
            elif isinstance(node, ast.Compare) and any(is_env(c) for c in node.comparators):
                names |= constants(node.left)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and re.search(r"_ENV(_NAMES)?$", t.id) for t in targets):
                    names |= constants(node.value) if node.value else set()
    return names


def test_every_environment_variable_read_is_documented() -> None:
    """A variable the code reads must be one users can look up; and since any other plain
    ``SLUICEGATE_*`` is refused, the environment table of tasks.md lists every one accepted."""
    from sluicegate.settings_env import PLAIN_ENV_NAMES

    names = _env_names_read() - {"PYTHONPATH"}  # only extended, for a helper process
    assert {"PORT", "SLUICEGATE_PROJECT", "DSL_PATH", "LAMBDA_TASK_ROOT", "HTTPS_PROXY"} <= names
    docs = "".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))
    assert not sorted(n for n in names if f"`{n}" not in docs and f"${n}" not in docs)
    table = _page_section((REPO / "docs" / "tasks.md").read_text(), "## Environment variables")
    missing = [n for n in PLAIN_ENV_NAMES if f"`{n}`" not in table]
    assert not missing, f"add these to the environment variables of docs/tasks.md: {missing}"


_TOML_BLOCK = re.compile(r"^( *)```toml\n(.*?)^\1```", re.S | re.M)
_PART_OF = re.compile(r"# part of \S*?(sluicegate|task)\.toml\b")
_EXAMPLE = REPO / "src" / "sluicegate" / "templates" / "openaq"


def _toml_examples() -> list[tuple[str, str]]:
    """``(page:line, text)`` of every ```toml block of the docs and the README, unindented."""
    found = []
    for page in [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md"]:
        text = page.read_text()
        for m in _TOML_BLOCK.finditer(text):
            body = "".join(line[len(m.group(1)) :] + "\n" for line in m.group(2).splitlines())
            found.append((f"{page.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}", body))
    return found


def _merged(base: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in part.items():
        old = out.get(key)
        out[key] = _merged(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def _load_example(body: str, folder: Path, env: dict[str, str]) -> None:
    """Load one example with sluicegate's loader: as the file it is (a ``sluicegate.toml`` when it
    has settings' sections only, else a ``task.toml``), or, when its first line says that it is
    ``# part of X.toml``, merged into the OpenAQ example's X.toml (``sluicegate init``'s)."""
    import json
    import tomllib

    from sluicegate import config
    from sluicegate.drivers import kind_module
    from sluicegate.settings_env import SETTINGS_KEYS

    raw = tomllib.loads(body.replace('"gAAAAA..."', json.dumps(env["TOKEN"])))  # a token's placeholder
    part = _PART_OF.match(body.splitlines()[0])
    is_settings = part.group(1) == "sluicegate" if part else set(raw) <= set(SETTINGS_KEYS)
    settings_raw = tomllib.loads((_EXAMPLE / "sluicegate.toml").read_text())
    if is_settings:
        settings_raw = _merged(settings_raw, raw) if part else raw
    (folder / "sluicegate.toml").write_text(
        "".join(
            f"[{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
            for section, keys in settings_raw.items()
        )
    )
    settings = config.load_settings(folder, env)
    if is_settings:
        return
    task = folder / "tasks" / "example"
    task.mkdir(parents=True)
    aggregate = raw.get("kind") == "aggregate"
    (task / "select.sql").write_text("SELECT count(*) AS n FROM in_window\n" if aggregate else "SELECT 1\n")
    if part:
        raw = _merged(tomllib.loads((_EXAMPLE / "tasks" / "openaq" / "task.toml").read_text()), raw)
        kind_module(raw.get("kind", "partitioned")).load(
            name="example", folder=task, raw=raw, settings=settings
        )
    else:
        (task / "task.toml").write_text(body.replace('"gAAAAA..."', json.dumps(env["TOKEN"])))
        config.load_task(task, settings)


def test_every_toml_example_of_the_docs_loads(tmp_path: Path) -> None:
    """A newcomer copies the docs' examples: each ```toml block must load as the file it is, or say
    on its first line that it is ``# part of task.toml`` (or sluicegate.toml); such a part must
    load within the OpenAQ example. Five parts said nothing, and the migrating page's `zone_sql`,
    copied as shown, was "unknown setting 'zone_sql'" (it belongs in [time])."""
    from sluicegate import secrets

    key = secrets.generate_key()
    env = {"SLUICEGATE_FERNET_KEY": key, "TOKEN": secrets.encrypt("placeholder", key)}
    examples = _toml_examples()
    assert len(examples) >= 14
    failed = []
    for n, (where, body) in enumerate(examples):
        folder = tmp_path / str(n)
        folder.mkdir()
        try:
            _load_example(body, folder, env)
        except Exception as exc:  # every example is tried, then all failures named
            failed.append(f"{where}: {type(exc).__name__}: {exc}")
    assert not failed, "\n".join(failed)
    assert any(_PART_OF.match(body) for _, body in examples)  # the parts were tried as parts
