"""The status page at ``/``: server-rendered HTML, no front-end build step."""

from __future__ import annotations

import html
from typing import Any

from .. import operations
from ..drivers.partitioned import Task as PartitionedTask
from ..exceptions import SluicegateError
from ..ledger import Ledger
from ..operations import ledger_of
from ..specs import Project

COLOURS = {
    "exported": "#2e7d32",
    "pending": "#f9a825",
    "waiting": "#90a4ae",
    "claimed": "#1565c0",
    "failed": "#c62828",
}
MAX_ROWS = 60
MAX_COLUMNS = 21

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
td, th { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f4f4f4; } td.k { text-align: left; }
table.grid td { width: 1.1rem; height: 1.1rem; padding: 0; border: 1px solid #fff; }
.legend span { display: inline-block; padding: 0.1rem 0.5rem; margin-right: 0.3rem; color: #fff; }
.error { color: #c62828; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def render_page(project: Project) -> str:
    """The whole page for ``project``."""
    statuses = operations.status(project)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>sluicegate</title>",
        f"<style>{_STYLE}</style></head><body><h1>sluicegate</h1>",
        _legend(),
        _counts(statuses),
    ]
    with ledger_of(project) as ledger:
        parts.append(_runs(ledger.runs.recent(limit=10)))
        for task in sorted(project.tasks.values(), key=lambda t: t.name):
            if isinstance(task, PartitionedTask):
                parts.append(_grid(task, ledger))
    parts.append("</body></html>")
    return "".join(parts)


def _legend() -> str:
    spans = "".join(f"<span style='background:{c}'>{_e(s)}</span>" for s, c in COLOURS.items())
    return f"<p class='legend'>{spans}</p>"


def _counts(statuses: list[dict[str, Any]]) -> str:
    rows = [
        "<h2>Tasks</h2><table id='tasks'><tr><th>task</th><th>pending</th><th>waiting</th><th>claimed</th>"
        "<th>exported</th><th>failed</th><th>oldest pending</th></tr>"
    ]
    for st in statuses:
        if "error" in st:
            rows.append(
                f"<tr><td class='k'>{_e(st['task'])}</td><td colspan='6' class='error k'>{_e(st['error'])}</td></tr>"
            )
            continue
        if st.get("task_error"):
            rows.append(
                f"<tr><td class='k'>{_e(st['task'])}</td><td colspan='6' class='error k'>"
                f"last run failed: {_e(st['task_error'])}</td></tr>"
            )
        if st.get("kind", "partitioned") != "partitioned":
            rows.append(
                f"<tr><td class='k'>{_e(st['task'])}</td><td colspan='6' class='k'>"
                f"{_e(st['kind'])}: {_e(operations.status_text(st))}</td></tr>"
            )
            continue
        age = st["oldest_pending_age"]
        rows.append(
            f"<tr><td class='k'>{_e(st['task'])}</td><td>{st['pending']}</td><td>{st['waiting']}</td>"
            f"<td>{st['claimed']}</td><td>{st['exported']}</td><td>{st['failed']}</td>"
            f"<td>{'-' if age is None or not st['pending'] else f'{age / 3600:.1f} h'}</td></tr>"
        )
        if st.get("inbox"):
            rows.append(
                f"<tr><td></td><td colspan='6' class='k'>{st['inbox']} captured change(s) not yet folded in</td></tr>"
            )
    rows.append("</table>")
    return "".join(rows)


def _runs(runs: list[dict[str, Any]]) -> str:
    out = [
        "<h2>Recent runs</h2><table id='runs'><tr><th>run</th><th>task</th><th>state</th><th>started</th>"
        "<th>finished</th></tr>"
    ]
    for r in runs:
        out.append(
            f"<tr><td class='k'>{_e(r['id'][:8])}</td><td class='k'>{_e(r['task'])}</td>"
            f"<td class='k'>{_e(r['state'])}</td><td>{_e(r['started_at'] or '')}</td>"
            f"<td>{_e(r['finished_at'] or '')}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def _grid(task: PartitionedTask, ledger: Ledger) -> str:
    """Keys down, time across, one coloured cell per partition."""
    try:
        parts = ledger.partitions.list_partitions(task, state=None, limit=20000, offset=0)
    except SluicegateError as exc:
        return f"<h2>{_e(task.name)}</h2><p class='error'>{_e(exc)}</p>"
    time_name = task.time.name if task.time else None
    cells: dict[tuple[str, str], str] = {}
    keys: set[str] = set()
    periods: set[str] = set()
    for p in parts:
        key = " ".join(f"{k}={p['keys'][k]}" for k in task.keys) or task.name
        period = str(p["keys"].get(time_name, "")) if time_name else ""
        cells[(key, period)] = p["state"]
        keys.add(key)
        periods.add(period)
    columns = sorted(periods)[-MAX_COLUMNS:]
    rows = sorted(keys, key=lambda k: [int(x) if x.isdigit() else x for x in k.replace("=", " ").split()])[
        :MAX_ROWS
    ]
    out = [f"<h2>{_e(task.name)}: partitions</h2><table class='grid' id='grid-{_e(task.name)}'><tr><th></th>"]
    out += [f"<th title='{_e(c)}'>{_e(c[-5:])}</th>" for c in columns]
    out.append("</tr>")
    for key in rows:
        out.append(f"<tr><td class='k'>{_e(key)}</td>")
        for column in columns:
            state = cells.get((key, column))
            colour = COLOURS.get(state or "", "#fff")
            title = f"{key} {column}: {state or 'no data'}"
            out.append(
                f"<td class='{_e(state or 'none')}' style='background:{colour}' title='{_e(title)}'></td>"
            )
        out.append("</tr>")
    out.append("</table>")
    if len(keys) > MAX_ROWS:
        out.append(f"<p>showing {MAX_ROWS} of {len(keys)} keys</p>")
    return "".join(out)
