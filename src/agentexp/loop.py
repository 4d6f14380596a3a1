"""The loop: each cycle decides, reviews, gates, acts and records, and nothing else."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from agentexp import context as context_mod
from agentexp import gate, signals
from agentexp.agents import CallRecord
from agentexp.agents.mentor import Mentor, MentorResult, apply_review, review_todo
from agentexp.agents.worker import Worker
from agentexp.config import LoopConfig
from agentexp.decisions import Action, WorkerDecision
from agentexp.executor import Executor, RunOutcome
from agentexp.llm.base import ScriptExhausted
from agentexp.mission import Mission
from agentexp.signals import CycleSummary, Signals
from agentexp.todos import TodoQueue
from agentexp.tracking import Tracker, trace_id_for
from agentexp.workspace import State, Workspace

log = logging.getLogger(__name__)

HISTORY_WINDOW = 200
"""Cycles of history the signals and prompts look at; older ones live in MLflow."""


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


class Loop:
    def __init__(
        self,
        cfg: LoopConfig,
        mission: Mission,
        workspace: Workspace,
        tracker: Tracker,
        executor: Executor,
        worker: Worker,
        mentor: Mentor | None,
        clock=time.time,
    ):
        self.cfg, self.mission, self.ws, self.tracker = cfg, mission, workspace, tracker
        self.executor, self.worker, self.mentor, self.clock = executor, worker, mentor, clock
        self.todos = TodoQueue(workspace.artifacts)
        self.history: list[CycleSummary] = []
        self.idle_streak = 0
        self.new_evidence = False
        self.deadline: float | None = None

    # ---- session ---------------------------------------------------------------------------------

    def run(self) -> str:
        """Run up to max_cycles cycles, let running trainings finish, and return why the loop stopped."""
        with self.ws.lock():
            state = self._resume()
            for _ in range(self.cfg.loop.max_cycles):
                reason = self._stop_reason(state)
                if reason:
                    break
                try:
                    if self.run_cycle(state) == Action.FINISH:
                        reason = "finish"
                        break
                except ScriptExhausted as err:
                    log.info("%s", err)
                    reason = "script_exhausted"
                    break
                time.sleep(self.cfg.loop.poll_seconds)
            else:
                reason = "max_cycles"
            self._drain(state)
            self.tracker.end_run(state.loop_run_id, "FINISHED")
            self._heartbeat(status="stopped", reason=reason, cycle=state.cycle)
            return reason

    def _resume(self) -> State:
        """Pick up state after a restart: reap runs whose process died, reopen this session's loop run."""
        self.ws.create()
        self.ws.clear_stop()
        self.tracker.reap(Executor.alive)
        state = self.ws.load_state() or State()
        params = {
            "mission": self.mission.name,
            "llm": self.cfg.llm.name,
            "max_cycles": self.cfg.loop.max_cycles,
        }
        state.loop_run_id = self.tracker.start_loop(state.session_id, params, state.loop_run_id)
        self.history = [
            CycleSummary.model_validate(e["summary"]) for e in self.ws.events() if e["event"] == "cycle_end"
        ]
        if self.cfg.loop.run_hours:
            self.deadline = self.clock() + self.cfg.loop.run_hours * 3600
        self.ws.save_state(state)
        return state

    def _stop_reason(self, state: State) -> str | None:
        budget = self.cfg.loop
        if self.ws.stop_requested():
            return "stop_requested"
        if self.deadline and self.clock() >= self.deadline:
            return "run_hours"
        if budget.max_llm_calls and state.llm_calls >= budget.max_llm_calls:
            return "llm_call_budget"
        if budget.max_cost_usd and state.cost_usd >= budget.max_cost_usd:
            return "cost_budget"
        return None

    def _drain(self, state: State) -> None:
        """Trainings still running finish (bounded by their own timeout) unless a stop was requested."""
        while state.active_runs:
            if self.ws.stop_requested():
                for run in list(state.active_runs):
                    self._ended(state, [self.executor.terminate(run)])
                break
            ended = self.executor.monitor(state.active_runs, 60, self._beat(state), self.ws.stop_requested)
            self._ended(state, ended)
        self.ws.save_state(state)

    # ---- one cycle -------------------------------------------------------------------------------

    def run_cycle(self, state: State) -> Action:
        number = state.cycle + 1
        trace_id = trace_id_for(number)
        self._heartbeat(status="running", cycle=number, cycle_trace_id=trace_id)
        self.ws.append_event(number, trace_id, "cycle_start")
        ended = self._poll(state)
        sig = signals.compute(
            self.history[-HISTORY_WINDOW:], len(self.todos.open_items()), self.mission.direction
        )
        ctx = self._context(state, number, sig, ended)
        result = self.worker.decide(ctx)
        cycle = Cycle(
            number, trace_id, sig, result.decision or _wait(result.error), result.calls, result.error
        )
        cycle.ended = ended
        self._count_calls(state, cycle.calls)
        self._review(state, cycle, ctx)
        self._gate(state, cycle)
        run_id = self.tracker.start_decision(state.loop_run_id, number, trace_id)
        self._act(state, cycle, run_id)
        self._housekeeping(cycle)
        self._record(state, cycle, run_id)
        return cycle.decision.action

    def _poll(self, state: State) -> list[RunOutcome]:
        ended = [outcome for run in state.active_runs if (outcome := self.executor.poll(run))]
        self._ended(state, ended)
        return ended

    def _ended(self, state: State, outcomes: list[RunOutcome]) -> None:
        if not outcomes:
            return
        labels = {o.run_label for o in outcomes}
        state.active_runs = [r for r in state.active_runs if r.run_label not in labels]
        state.last_training_end = self.clock()
        self.tracker.invalidate()
        self.new_evidence = True
        self.ws.save_state(state)

    def _context(self, state: State, number: int, sig: Signals, ended: list[RunOutcome]):
        failed = [o for o in ended if o.status == "failed"]
        return context_mod.build(
            self.ws,
            runs=self.tracker.training_runs(),
            history=self.history[-HISTORY_WINDOW:],
            signals=sig,
            mission=self.mission,
            cycle=number,
            active_runs=[r.run_label for r in state.active_runs],
            deadline=None,
            failed_log_tail=failed[-1].error_tail if failed else "",
        )

    def _count_calls(self, state: State, calls: list[CallRecord]) -> None:
        state.llm_calls += len(calls)
        state.cost_usd += sum(c.usage.cost_usd for c in calls)

    def _review(self, state: State, cycle: Cycle, ctx) -> None:
        if self.mentor is None:
            return
        busy = bool(state.active_runs) and cycle.decision.action == Action.WAIT
        trigger = self.mentor.due(cycle.number, cycle.signals, busy, self.idle_streak, self.new_evidence)
        if trigger is None:
            return
        ctx.structured["decision"] = cycle.decision.model_dump(mode="json")
        cycle.mentor = self.mentor.review(cycle.decision, ctx, trigger)
        self._count_calls(state, cycle.mentor.calls)
        self.new_evidence = False
        if cycle.mentor.review is not None:
            cycle.decision, cycle.replaced = apply_review(
                cycle.decision, cycle.mentor.review, self.cfg.mentor
            )

    def _gate(self, state: State, cycle: Cycle) -> None:
        decision = cycle.decision
        verdict = gate.check(decision, self.cfg.gate)
        violations = list(verdict.violations)
        if decision.action == Action.TRAIN and not violations:
            if not self.executor.has_capacity(state.active_runs):
                violations.append(f"{len(state.active_runs)} training(s) already running (max_concurrent)")
            else:
                violations += gate.check_composes(self._train_overrides(decision))
        if violations:
            cycle.violations = violations
            cycle.decision = gate.downgrade(decision, gate.Verdict(passed=False, violations=violations))
            cycle.outcome = "downgraded"

    def _train_overrides(self, decision: WorkerDecision) -> list[str]:
        return [*self.cfg.loop.train_overrides, *self.mission.overrides, *decision.overrides]

    def _act(self, state: State, cycle: Cycle, decision_run_id: str) -> None:
        decision = cycle.decision
        if decision.action == Action.TRAIN:
            label = decision.run_label
            run = self.executor.launch(
                label, self._train_overrides(decision), cycle.number, cycle.trace_id, decision_run_id
            )
            state.active_runs.append(run)
            self.ws.save_state(state)  # a crash from here on still knows the process
            cycle.launched, cycle.outcome = label, "launched"
        elif decision.action == Action.ANALYZE:
            cycle.outcome = "analyzed"
        elif decision.action == Action.FINISH:
            cycle.outcome = "finished_loop"
        if state.active_runs and decision.action in (Action.TRAIN, Action.WAIT):
            seconds = self.executor.monitor_window(decision.monitor_seconds, runs_active=True)
            ended = self.executor.monitor(
                state.active_runs, seconds, self._beat(state), self.ws.stop_requested
            )
            self._ended(state, ended)
            cycle.ended += ended

    def _beat(self, state: State):
        return lambda: self._heartbeat(
            status="monitoring", cycle=state.cycle + 1, active_runs=[r.run_label for r in state.active_runs]
        )

    def _heartbeat(self, **info) -> None:
        """Heartbeats also say where the store is, so `agentexp status` needs no config."""
        store = {
            "tracking_uri": self.tracker.uri,
            "experiment": self.tracker.experiment,
            "direction": self.mission.direction,
        }
        self.ws.heartbeat(**store, **info)

    def _housekeeping(self, cycle: Cycle) -> None:
        """Notes and TODOs from the decision (and an off_track mentor), stored as data."""
        chores = cycle.decision.housekeeping
        if chores.notes_update:
            self.ws.append_workpad("Notes", cycle.number, chores.notes_update)
        if chores.data_exploration_update:
            self.ws.append_workpad("Data Exploration", cycle.number, chores.data_exploration_update)
        self.todos.resolve(chores.resolve_shared_todo_ids)
        self.todos.add(chores.todo_new, "worker", cycle.number)
        review = cycle.mentor.review if cycle.mentor else None
        if review is not None and review.verdict == "off_track":
            if todo := review_todo(review):
                self.todos.add([todo], "mentor", cycle.number)
            self.ws.append_mentor_note(cycle.number, f"{review.critical_question or ''} {review.rationale}")

    # ---- record ----------------------------------------------------------------------------------

    def _record(self, state: State, cycle: Cycle, decision_run_id: str) -> None:
        summary = _summary(cycle)
        self.history.append(summary)
        self.idle_streak = self.idle_streak + 1 if summary.outcome in ("waited", "downgraded") else 0
        if cycle.mentor:
            self.ws.append_event(cycle.number, cycle.trace_id, "mentor", mentor=_mentor_event(cycle))
        if cycle.violations:
            self.ws.append_event(cycle.number, cycle.trace_id, "quality_gate", quality_gate=cycle.violations)
        for outcome in cycle.ended:
            self.ws.append_event(cycle.number, cycle.trace_id, "run_end", run=outcome.model_dump(mode="json"))
        self.tracker.finish_decision(decision_run_id, *_decision_record(self.cfg, cycle))
        state.cycle = cycle.number
        self.ws.save_state(state)
        self.ws.append_storyline(cycle.number, cycle.trace_id, _story(cycle))
        self.ws.append_event(
            cycle.number,
            cycle.trace_id,
            "cycle_end",
            summary=summary.model_dump(mode="json"),
            decision_run_id=decision_run_id,
        )


def _wait(error: str | None) -> WorkerDecision:
    return WorkerDecision(action=Action.WAIT, rationale=f"no valid decision from the worker: {error}"[:2000])


def _summary(cycle: Cycle) -> CycleSummary:
    metrics = [o.metric for o in cycle.ended if o.status == "finished" and o.metric is not None]
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
        metric=max(metrics) if metrics else None,
    )


def _mentor_event(cycle: Cycle) -> dict:
    mentor = cycle.mentor
    review = mentor.review.model_dump(mode="json") if mentor.review else None
    return {"trigger": mentor.trigger, "review": review, "error": mentor.error, "replaced": cycle.replaced}


def _story(cycle: Cycle) -> str:
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


def _decision_record(cfg: LoopConfig, cycle: Cycle) -> tuple[dict, dict, dict, dict]:
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
    }
    tags = {"agentexp.outcome": cycle.outcome}
    if cycle.violations:
        tags["agentexp.gate.violations"] = "; ".join(cycle.violations)
    if cycle.worker_error:
        tags["agentexp.worker_error"] = cycle.worker_error
    texts = {"decision.json": d.model_dump_json(indent=2)}
    if cycle.calls:
        texts["prompt.md"] = cycle.calls[-1].prompt
        texts["raw_response.txt"] = "\n\n---\n\n".join(c.raw for c in cycle.calls)
    if cycle.mentor:
        texts["mentor_review.json"] = json.dumps(_mentor_event(cycle), indent=2)
        if cycle.mentor.calls:
            texts["mentor_prompt.md"] = cycle.mentor.calls[-1].prompt
    return params, metrics, tags, texts
