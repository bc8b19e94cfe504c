#!/usr/bin/env python3
"""Measure the shape of src/sluicegate: module and function sizes, and cross-module private access.

    python scripts/shape.py [--json] [SRC]

Cross-module private accesses are counted with an ``ast`` walk:

* ``obj._name`` where ``obj`` is not ``self`` or ``cls`` (an attribute of another object, whose
  class lives elsewhere or is another instance), excluding dunder names and ``_name`` access on
  modules of the same package that define it;
* ``from .module import _name`` (importing a private name from another module).

Access to a private attribute of another instance of the same class in the same module (e.g.
``other._value`` inside ``__eq__``) is not counted: Python's convention allows it.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

# Documented public API that happens to start with an underscore (namedtuple's methods).
_PUBLIC_UNDERSCORED = {"_replace", "_asdict", "_fields", "_make"}


def _classes_defining(tree: ast.Module) -> dict[str, set[str]]:
    """Private attribute names assigned on ``self`` per class of a module."""
    out: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            names = out.setdefault(node.name, set())
            for sub in ast.walk(node):
                if (
                    isinstance(sub, ast.Attribute)
                    and isinstance(sub.value, ast.Name)
                    and sub.value.id == "self"
                ):
                    names.add(sub.attr)
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(sub.name)
    return out


def private_accesses(path: Path) -> list[str]:
    """The cross-module private accesses in one file, as ``file:line: text``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = set().union(*_classes_defining(tree).values()) if _classes_defining(tree) else set()
    own |= {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    own |= {
        t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path}:{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute):
            name = node.attr
            if not name.startswith("_") or name.startswith("__"):
                continue
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                continue
            if name in own:  # another instance of a class defined here (e.g. other._x in __eq__)
                continue
            if name in _PUBLIC_UNDERSCORED:
                continue
            found.append(f"{path}:{node.lineno}: .{name}")
    return found


def functions(tree: ast.Module) -> list[tuple[str, int]]:
    """``(qualified name, lines)`` of every function."""
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                end = child.end_lineno or child.lineno
                out.append((f"{prefix}{child.name}", end - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return out


def measure(src: Path) -> dict[str, object]:
    """The figures for every ``.py`` file under ``src``."""
    modules = []
    funcs: list[tuple[str, int]] = []
    privates: list[str] = []
    noqa = 0
    for path in sorted(src.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(src.parent)
        modules.append((str(rel), len(text.splitlines())))
        tree = ast.parse(text)
        funcs += [(f"{rel}:{name}", lines) for name, lines in functions(tree)]
        privates += private_accesses(path)
        noqa += text.count("noqa: C901")
    modules.sort(key=lambda m: -m[1])
    funcs.sort(key=lambda f: -f[1])
    sizes = sorted(lines for _, lines in funcs)
    return {
        "largest_modules": modules[:5],
        "longest_functions": funcs[:5],
        "function_lines_median": sizes[len(sizes) // 2] if sizes else 0,
        "function_lines_p90": sizes[int(len(sizes) * 0.9)] if sizes else 0,
        "cross_module_private_accesses": len(privates),
        "private_access_sites": privates,
        "noqa_c901": noqa,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "src", nargs="?", default=str(Path(__file__).resolve().parent.parent / "src" / "sluicegate")
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    figures = measure(Path(args.src))
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print("largest modules:", ", ".join(f"{m} {n}" for m, n in figures["largest_modules"]))  # type: ignore[attr-defined]
    print("longest functions:", ", ".join(f"{f} {n}" for f, n in figures["longest_functions"]))  # type: ignore[attr-defined]
    print(f"function lines: median {figures['function_lines_median']}, p90 {figures['function_lines_p90']}")
    print(f"cross-module private accesses: {figures['cross_module_private_accesses']}")
    for site in figures["private_access_sites"]:  # type: ignore[attr-defined]
        print("  ", site)
    print(f"noqa: C901: {figures['noqa_c901']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
