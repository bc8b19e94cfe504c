"""Keep the ``--help`` blocks of docs/cli.md equal to the command's real help.

    python scripts/cli_help.py          # exit 1 listing the blocks that differ
    python scripts/cli_help.py --write  # rewrite them from the command

A block is a ```text fence whose first line is ``$ sluicegate ... --help``; its body is what
that command prints at 80 columns. tests/unit/test_docs.py runs the check.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from click.testing import CliRunner

from sluicegate.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
BLOCK = re.compile(r"```text\n(\$ sluicegate[^\n]* --help)\n(.*?)```", re.S)


def help_text(command_line: str) -> str:
    """What ``command_line`` (``$ sluicegate X --help``) prints at 80 columns."""
    args = shlex.split(command_line[2:])[1:]
    result = CliRunner().invoke(main, args, terminal_width=80, prog_name="sluicegate")
    return result.output


def blocks(text: str) -> list[tuple[str, str, str]]:
    """``(command line, documented help, real help)`` per block."""
    return [(m.group(1), m.group(2), help_text(m.group(1))) for m in BLOCK.finditer(text)]


def rewrite(text: str) -> str:
    """``text`` with every help block replaced by the real help."""
    return BLOCK.sub(lambda m: f"```text\n{m.group(1)}\n{help_text(m.group(1))}```", text)


def main_(argv: list[str]) -> int:
    text = DOC.read_text()
    if "--write" in argv:
        DOC.write_text(rewrite(text))
        return 0
    stale = [line for line, documented, real in blocks(text) if documented != real]
    for line in stale:
        print(f"{DOC}: the block '{line}' differs from the command; run scripts/cli_help.py --write")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main_(sys.argv[1:]))
