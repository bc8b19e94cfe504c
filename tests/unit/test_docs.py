"""The docs stay in step with the code: every ``--help`` block of docs/cli.md is the real help."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
    missing = [name for name in main.commands if f"$ sluicegate {name} --help" not in documented]
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
