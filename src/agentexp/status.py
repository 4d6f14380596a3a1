"""The status view of a workspace: running, stopped (and why) or crashed, active runs, GPU, top-3."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from rich.console import Group
from rich.table import Table
from rich.text import Text

from agentexp import gpu, ranking, tracking
from agentexp.finishup import FinishUp, deadline_text
from agentexp.launchers.local import START_TOLERANCE_S, alive
from agentexp.workspace import Workspace

TOP = 3


def render(ws: Workspace, read_gpus=gpu.gpu_utilization) -> Group:
    """Everything `agentexp status` shows, read from the workspace and the MLflow store."""
    pid = ws.holder_pid()
    beat = ws.read_heartbeat() or {}
    state = ws.load_state() if ws.state_path.exists() else None
    lines = [headline(pid, beat, state.stop_reason if state else None)]
    if beat:
        age = time.time() - beat.get("ts", 0)
        lines.append(
            Text(f"heartbeat {age:.0f}s ago: {beat.get('status', '?')}, cycle {beat.get('cycle', '-')}")
        )
    if state is not None:
        lines.append(
            Text(f"completed cycles: {state.cycle}; LLM calls: {state.llm_calls}; cost ${state.cost_usd:.4f}")
        )
    running = [run for run in beat.get("active_runs", []) if _lives(run)]
    lines.append(_active(running) if running else Text("active runs: none"))
    if (schedule := ws.read_finishup()) is not None:
        f = FinishUp.model_validate(schedule)
        lines.append(Text(f"finish-up: {f.state}, deadline {deadline_text(f, datetime.now(UTC))}"))
    lines.append(Text(f"GPU: {_gpus(read_gpus(), running) or 'none'}"))
    if beat.get("tracking_uri"):
        src = tracking.Source(
            beat["tracking_uri"], beat["experiment"], beat.get("metric", "best_val_acc"), beat["direction"]
        )
        lines.append(_top(src))
    return Group(*lines)


def headline(pid: int | None, beat: dict, stop_reason: str | None) -> Text:
    """running (pid), stopped (reason), or crashed: no loop holds the lock, yet the last heartbeat was not
    a stop."""
    if pid:
        return Text(f"agentexp: running (pid {pid})", style="bold green")
    if beat and beat.get("status") != "stopped":
        age = time.time() - beat.get("ts", 0)
        return Text(
            f"agentexp: crashed (last heartbeat {age:.0f}s ago, pid {beat.get('pid')})", style="bold red"
        )
    reason = stop_reason or beat.get("reason")
    return Text("agentexp: stopped" + (f" ({reason})" if reason else ""), style="bold")


def _lives(run: dict) -> bool:
    """A training listed by the heartbeat whose process is still there (not a recycled pid); a SLURM job
    as long as the loop lists it."""
    import psutil

    if run.get("job_id"):
        return True

    try:
        started = psutil.Process(run["pid"]).create_time()
    except psutil.Error:
        return False
    return abs(started - run["started_at"]) <= START_TOLERANCE_S and alive(run["pid"])


def _gpus(readings: list[dict], running: list[dict]) -> str:
    """Each GPU's utilisation and memory, and the run its slot holds."""
    holders = {run.get("gpu"): run["run_label"] for run in running}
    return ", ".join(
        f"{g['index']}: {g['util_pct']:.0f}% {g['mem_used_gib']:.1f}/{g['mem_total_gib']:.1f} GiB"
        + (f" ({holders[g['index']]})" if g["index"] in holders else "")
        for g in readings
    )


def _active(runs: list[dict]) -> Table:
    table = Table(title="active runs", title_justify="left")
    for column in ("label", "pid or job", "cycle", "running for"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            run["run_label"],
            run.get("job_id") or str(run["pid"]),
            str(run["cycle"]),
            f"{time.time() - run['started_at']:.0f}s",
        )
    return table


def _top(src: tracking.Source) -> Table | Text | Group:
    experiment_id = tracking.find_experiment(src.uri, src.experiment)
    rows = (
        tracking.run_table(src.uri, experiment_id, "train", (src.metric,), (), ranking.KEY_TAGS)
        if experiment_id
        else []
    )
    entries = ranking.rank(rows, src.metric, src.direction, TOP)
    if not entries:
        counts = {s: sum(r["status"] == s for r in rows) for s in ("RUNNING", "FAILED", "KILLED")}
        done = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) or "none yet"
        return Text(
            f"top-{TOP}: no training finished with {src.metric} yet ({len(rows)} training runs: {done})"
        )
    table = Table(title=f"top-{TOP} configurations by {src.metric}", title_justify="left")
    for column in ("rank", "run", "metric", "run id"):
        table.add_column(column)
    for e in entries:
        table.add_row(str(e.rank), e.run_label, e.metric_text(), e.run_id)
    note = ranking.split_note(rows, src.metric)
    return Group(table, Text(note)) if note else table
