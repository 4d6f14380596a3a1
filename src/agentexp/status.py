"""The status view of a workspace: running or stopped, heartbeat age, active runs, GPU, top-3."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from rich.console import Group
from rich.table import Table
from rich.text import Text

from agentexp import gpu
from agentexp.context import RunView
from agentexp.finishup import FinishUp, deadline_text
from agentexp.tracking import Tracker
from agentexp.workspace import Workspace

TOP = 3


def render(ws: Workspace) -> Group:
    """Everything `agentexp status` shows, read from the workspace and the MLflow store."""
    pid = ws.holder_pid()
    beat = ws.read_heartbeat() or {}
    state = ws.load_state() if ws.state_path.exists() else None
    headline = f"agentexp: running (pid {pid})" if pid else "agentexp: stopped"
    lines = [Text(headline, style="bold green" if pid else "bold")]
    if beat:
        age = time.time() - beat.get("ts", 0)
        lines.append(
            Text(f"heartbeat {age:.0f}s ago: {beat.get('status', '?')}, cycle {beat.get('cycle', '-')}")
        )
    if state is not None:
        lines.append(
            Text(f"completed cycles: {state.cycle}; LLM calls: {state.llm_calls}; cost ${state.cost_usd:.4f}")
        )
        lines.append(_active(state) if state.active_runs else Text("active runs: none"))
    if (schedule := ws.read_finishup()) is not None:
        f = FinishUp.model_validate(schedule)
        lines.append(Text(f"finish-up: {f.state}, deadline {deadline_text(f, datetime.now(UTC))}"))
    lines.append(
        Text(
            "GPU: "
            + (
                ", ".join(f"{g['util_pct']:.0f}% {g['mem_used_gib']:.1f} GiB" for g in gpu.gpu_utilization())
                or "none"
            )
        )
    )
    if beat.get("tracking_uri"):
        lines.append(
            _top(Tracker(beat["tracking_uri"], beat["experiment"]), beat.get("direction", "maximize"))
        )
    return Group(*lines)


def _active(state) -> Table:
    table = Table(title="active runs", title_justify="left")
    for column in ("label", "pid", "cycle", "running for"):
        table.add_column(column)
    for run in state.active_runs:
        table.add_row(run.run_label, str(run.pid), str(run.cycle), f"{time.time() - run.started_at:.0f}s")
    return table


def _top(tracker: Tracker, direction: str) -> Table:
    table = Table(title=f"top-{TOP} training runs", title_justify="left")
    for column in ("rank", "run", "metric", "run id"):
        table.add_column(column)
    for run in RunView(tracker.training_runs()).leaderboard(direction)[:TOP]:
        table.add_row(str(run["rank"]), run["run_label"], f"{run['metric']:.4f}", run["run_id"])
    return table
