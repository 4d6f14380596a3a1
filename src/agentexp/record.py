"""What one cycle is and leaves behind: its summary, storyline line, decision-run record, console line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import unidiff

from agentexp import tracking
from agentexp.agents import CallRecord
from agentexp.agents.mentor import MentorResult, review_todo
from agentexp.codebase import Experiment
from agentexp.config import LoopConfig
from agentexp.decisions import MentorReview, WorkerDecision
from agentexp.events import CycleEnd, Launch, MentorRecord
from agentexp.finishup import PlannedRun
from agentexp.launchers.base import ActiveRun, RunOutcome
from agentexp.signals import CycleSummary, Signals
from agentexp.todos import TodoQueue
from agentexp.tracking import Tracker
from agentexp.workspace import State, Workspace


@dataclass
class Cycle:
    """Everything one cycle produced, recorded at its end."""

    number: int
    trace_id: str
    signals: Signals
    decision: WorkerDecision
    calls: list[CallRecord]
    worker_error: str | None = None
    mentor: MentorResult | None = None
    replaced: bool = False
    violations: list[str] = field(default_factory=list)
    launched: str | None = None
    ended: list[RunOutcome] = field(default_factory=list)
    outcome: str = "waited"
    planned: PlannedRun | None = None
    """A finish-up seed run the loop launches itself: no LLM, mentor or gate."""
    patch: str | None = None
    """The decision's patch as proposed (kept when the gate downgrades the decision)."""
    experiment: Experiment | None = None
    """The code experiment the patch became."""
    gpu: list[dict] = field(default_factory=list)
    """The GPU slots as the agents saw them (empty on CPU)."""


def summary(cycle: Cycle, direction: str) -> CycleSummary:
    """The cycle as the signals and the next prompts see it (the better metric of what ended in it)."""
    metrics = [o.metric for o in cycle.ended if o.status == "finished" and o.metric is not None]
    better = min if direction == "minimize" else max
    outcome = cycle.outcome
    if any(o.status == "failed" for o in cycle.ended):
        outcome = "failed"
    elif metrics and outcome == "waited":
        outcome = "finished"
    return CycleSummary(
        cycle=cycle.number,
        action=cycle.decision.action.value,
        run_label=cycle.launched,
        strategy_dimension=cycle.decision.strategy_dimension if cycle.launched else None,
        outcome=outcome,
        metric=better(metrics) if metrics else None,
    )


def count_calls(state: State, calls: list[CallRecord]) -> None:
    """The LLM-call and cost budgets' counters."""
    state.llm_calls += len(calls)
    state.cost_usd += sum(c.usage.cost_usd for c in calls)


def mentor_record(cycle: Cycle) -> MentorRecord:
    mentor = cycle.mentor
    return MentorRecord(
        trigger=mentor.trigger, review=mentor.review, error=mentor.error, replaced=cycle.replaced
    )


def story(cycle: Cycle) -> str:
    """The cycle's storyline line."""
    d = cycle.decision
    parts = [f"{d.action.value}"]
    if cycle.launched:
        parts.append(f"{cycle.launched} [{d.strategy_dimension}] {' '.join(d.overrides)}")
    for o in cycle.ended:
        parts.append(f"run {o.run_label} {o.status}" + (f" {o.metric:.4f}" if o.metric is not None else ""))
    if cycle.violations:
        parts.append(f"gate: {'; '.join(cycle.violations)}")
    if cycle.mentor and cycle.mentor.review:
        parts.append(f"mentor ({cycle.mentor.trigger}): {cycle.mentor.review.verdict}")
    return " | ".join(parts)


def decision_record(cfg: LoopConfig, cycle: Cycle) -> tuple[dict, dict, dict, dict]:
    """Params, metrics, tags and artifact texts of a decision run."""
    d = cycle.decision
    calls = cycle.calls + (cycle.mentor.calls if cycle.mentor else [])
    params = {
        "action": d.action.value,
        "run_label": cycle.launched or "",
        "strategy_dimension": d.strategy_dimension or "",
        "overrides": json.dumps(d.overrides),
        "monitor_seconds": d.monitor_seconds,
        "llm": cfg.llm.name,
        "mentor_trigger": cycle.mentor.trigger if cycle.mentor else "",
        **{f"signal.{k}": v for k, v in cycle.signals.model_dump().items()},
    }
    metrics = {
        "latency_s": sum(c.latency_s for c in calls),
        "input_tokens": sum(c.usage.input_tokens for c in calls),
        "output_tokens": sum(c.usage.output_tokens for c in calls),
        "cost_usd": sum(c.usage.cost_usd for c in calls),
        "llm_calls": len(calls),
        "reasks": max(0, len(cycle.calls) - 1),
        "gate_violations": len(cycle.violations),
        **gpu_metrics(cycle.gpu),
    }
    texts = {"decision.json": d.model_dump_json(indent=2)}
    tags = {"agentexp.outcome": cycle.outcome}
    if cycle.patch is not None:
        params |= diffstat(cycle.patch)
        texts["code/patch.diff"] = cycle.patch
        if cycle.experiment is None:
            tags[tracking.CODE_OUTCOME] = "rejected"
        else:
            tags |= {
                tracking.CODE_COMMIT: cycle.experiment.commit,
                tracking.CODE_BRANCH: cycle.experiment.branch,
            }
    if cycle.violations:
        tags["agentexp.gate.violations"] = "; ".join(cycle.violations)
    if cycle.worker_error:
        tags["agentexp.worker_error"] = cycle.worker_error
    if cycle.calls:
        texts["prompt.md"] = cycle.calls[-1].prompt
        texts["raw_response.txt"] = "\n\n---\n\n".join(c.raw for c in cycle.calls)
    if cycle.mentor:
        texts["mentor_review.json"] = mentor_record(cycle).model_dump_json(indent=2)
        if cycle.mentor.calls:
            texts["mentor_prompt.md"] = cycle.mentor.calls[-1].prompt
    return params, metrics, tags, texts


def gpu_metrics(slots: list[dict]) -> dict[str, float]:
    """`gpu.<index>.<reading>` metrics of the GPU slots, and `gpu.<index>.busy` (1 when a run holds it)."""
    metrics = {}
    for slot in slots:
        metrics[f"gpu.{slot['gpu']}.busy"] = float(slot["run"] is not None)
        metrics |= {f"gpu.{slot['gpu']}.{k}": v for k, v in slot.items() if k not in ("gpu", "run")}
    return metrics


def diffstat(patch: str) -> dict[str, int | str]:
    """A patch's size as decision-run params: files, added and removed lines."""
    try:
        files = unidiff.PatchSet(patch)
    except unidiff.UnidiffParseError:
        return {"code.files": "unparseable"}
    added, removed = sum(f.added for f in files), sum(f.removed for f in files)
    return {
        "code.files": ", ".join(f.path for f in files)[:500],
        "code.added": added,
        "code.removed": removed,
    }


def recovered(launch: Launch) -> tuple[CycleSummary, str, tuple[dict, dict, dict, dict]]:
    """Summary, story and decision-run record of a cycle a crash cut short after it launched a training."""
    decision, label = launch.run.decision, launch.run.run_label
    summary = CycleSummary(
        cycle=launch.cycle,
        action="train",
        run_label=label,
        strategy_dimension=decision.strategy_dimension,
        outcome="launched",
    )
    params = {
        "action": decision.action.value,
        "run_label": label,
        "strategy_dimension": decision.strategy_dimension or "",
        "overrides": json.dumps(decision.overrides),
    }
    tags = {"agentexp.outcome": "launched", "agentexp.recovered": "true"}
    texts = {"decision.json": decision.model_dump_json(indent=2)}
    story = f"train {label} [{decision.strategy_dimension}] (committed after a crash)"
    return summary, story, (params, {}, tags, texts)


def commit(
    ws: Workspace,
    tracker: Tracker,
    state: State,
    active: list[ActiveRun],
    number: int,
    trace: str,
    run_id: str,
    summary: CycleSummary,
    story: str,
) -> None:
    """The commit point: a restart counts the cycle done once its cycle_end is written, and completes
    the rest (state, storyline, decision run status) from it if a crash cuts in."""
    ws.append_event(
        CycleEnd(cycle=number, cycle_trace_id=trace, summary=summary, decision_run_id=run_id, story=story)
    )
    state.cycle, state.active_runs = number, list(active)
    ws.save_state(state)  # once per cycle: the events journal holds every launch and end
    ws.append_storyline(number, trace, story)
    tracker.end_run(run_id, "FINISHED", flush_traces=False)  # flushed at session end


def keep_house(ws: Workspace, todos: TodoQueue, cycle: Cycle) -> None:
    """Notes and TODOs from the decision (and an off_track mentor), stored as data."""
    chores = cycle.decision.housekeeping
    if chores.notes_update:
        ws.append_workpad("Notes", cycle.number, chores.notes_update)
    if chores.data_exploration_update:
        ws.append_workpad("Data Exploration", cycle.number, chores.data_exploration_update)
    if chores.resolve_shared_todo_ids:  # each queue call reads the whole queue file
        todos.resolve(chores.resolve_shared_todo_ids)
    if chores.todo_new:
        todos.add(chores.todo_new, "worker", cycle.number)
    review = cycle.mentor.review if cycle.mentor else None
    if review is None:
        return
    if todo := review_todo(review):
        todos.add([todo], "mentor", cycle.number)
    if note := mentor_note(review):
        ws.append_mentor_note(cycle.number, note)


def mentor_note(review: MentorReview) -> str:
    """What a review leaves in the mentor notes (which the next prompts show): a challenge's question
    and rationale, and the architectures it names to try, whatever its verdict ('' when neither)."""
    parts = []
    if review.verdict == "off_track":
        parts.append(f"{review.critical_question or ''} {review.rationale}".strip())
    if review.architecture_alternatives:
        parts.append(f"Architectures to try next: {', '.join(review.architecture_alternatives)}.")
    return " ".join(parts)


def better_of(value: float | None, best: float | None, direction: str) -> float | None:
    """The better of a new value and the best so far (None is no value)."""
    if value is None or (best is not None and (value >= best if direction == "minimize" else value <= best)):
        return best
    return value


def active_info(run: ActiveRun) -> dict:
    """A running training as the heartbeat (and so `agentexp status`) shows it."""
    info = {"run_label": run.run_label, "pid": run.pid, "cycle": run.cycle, "started_at": run.started_at}
    return info | {"gpu": run.gpu, "job_id": run.handle.job_id}


def console_line(
    s: CycleSummary, ended: list[RunOutcome], best: float | None, active: list[ActiveRun]
) -> str:
    """`cycle N | action label | outcome | what ended | best so far | running`, one line per cycle."""
    what = ", ".join(
        f"{o.run_label} {o.status}" + (f" {o.metric:.4f}" if o.metric is not None else "") for o in ended
    )
    best_text = f"{best:.4f}" if best is not None else "-"
    running = ", ".join(r.run_label for r in active) or "none"
    action = f"{s.action} {s.run_label}" if s.run_label else s.action
    parts = [f"cycle {s.cycle}", action, s.outcome, f"ended: {what or '-'}", f"best {best_text}"]
    return " | ".join([*parts, f"running: {running}"])
