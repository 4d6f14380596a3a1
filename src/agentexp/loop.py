"""The loop: each cycle decides, reviews, gates, acts and records, and nothing else."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from agentexp import context as context_mod
from agentexp import gate, repair, signals
from agentexp.agents import CallRecord
from agentexp.agents.mentor import Mentor, MentorResult, apply_review, review_todo
from agentexp.agents.worker import Worker, WorkerResult
from agentexp.config import LoopConfig
from agentexp.decisions import Action, WorkerDecision
from agentexp.executor import Executor, RunOutcome
from agentexp.finisher import Finisher, seed_decision
from agentexp.finishup import PlannedRun
from agentexp.llm.base import ScriptExhausted
from agentexp.mission import Mission
from agentexp.signals import CycleSummary, Signals
from agentexp.todos import TodoQueue
from agentexp.tracking import Tracker, set_tags, trace_id_for
from agentexp.workspace import ActiveRun, State, Workspace

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
    planned: PlannedRun | None = None
    """A finish-up seed run the loop launches itself: no LLM, mentor or gate."""


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
        self.idle_since: float | None = None
        """When the current streak of idle (wait/downgraded) cycles began."""
        self.new_evidence = False
        self.deadline: float | None = None
        self._runs: context_mod.RunView | None = None
        self.finisher = Finisher(workspace, tracker, mission)

    # ---- session ---------------------------------------------------------------------------------

    def run(self) -> str:
        """Run up to max_cycles cycles, let running trainings finish, and return why the loop stopped."""
        with self.ws.lock():
            state = self._resume()
            for _ in range(self.cfg.loop.max_cycles):
                reason = self._finish_up(state) or self._stop_reason(state)
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
        state = self.ws.load_state() or State()
        ends = [e for e in self.ws.events() if e["event"] == "cycle_end"]
        if ends:
            self._complete(state, ends[-1])
        self.tracker.reap(Executor.alive)
        params = {
            "mission": self.mission.name,
            "llm": self.cfg.llm.name,
            "max_cycles": self.cfg.loop.max_cycles,
        }
        state.loop_run_id = self.tracker.start_loop(state.session_id, params, state.loop_run_id)
        self.history = [CycleSummary.model_validate(e["summary"]) for e in ends]
        if self.cfg.loop.run_hours:
            self.deadline = self.clock() + self.cfg.loop.run_hours * 3600
        self.ws.save_state(state)
        return state

    def _complete(self, state: State, end: dict) -> None:
        """Finish the record of the last committed cycle when a crash cut it short after its cycle_end."""
        if end["cycle"] > state.cycle:
            state.cycle = end["cycle"]
            self.ws.save_state(state)
        last_line = self.ws.storyline_tail(1)
        if not last_line or f"[{end['cycle_trace_id']}]" not in last_line[0]:
            self.ws.append_storyline(end["cycle"], end["cycle_trace_id"], end.get("story", "(recovered)"))
        self.tracker.finish_if_running(end["decision_run_id"])

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
                self._end_outside_cycle(state, [self.executor.terminate(r) for r in state.active_runs])
            else:
                ended = self.executor.monitor(
                    state.active_runs, 60, self._beat(state), self.ws.stop_requested
                )
                self._end_outside_cycle(state, ended)
        self.ws.save_state(state)

    def _end_outside_cycle(self, state: State, ended: list[RunOutcome]) -> None:
        """Runs that end between cycles get their run_end event under the cycle that launched them."""
        runs = {run.run_label: run for run in state.active_runs}
        for outcome in ended:
            run = runs[outcome.run_label]
            self.ws.append_event(
                run.cycle, run.cycle_trace_id, "run_end", run=outcome.model_dump(mode="json")
            )
        self._ended(state, ended)

    # ---- one cycle -------------------------------------------------------------------------------

    def run_cycle(self, state: State) -> Action:
        number = state.cycle + 1
        trace_id = trace_id_for(number)
        self._heartbeat(status="running", cycle=number, cycle_trace_id=trace_id)
        self.ws.append_event(number, trace_id, "cycle_start")
        ended = self._poll(state) + self._stale_orphans(state, number, trace_id)
        sig = signals.compute(
            self.history[-HISTORY_WINDOW:], len(self.todos.open_items()), self.mission.direction
        )
        ctx = self._context(state, number, sig, ended)
        planned = self.finisher.next_run(self.executor.has_capacity(state.active_runs), self.clock())
        result = self._seed_result(state, planned) if planned else self.worker.decide(ctx)
        cycle = Cycle(
            number, trace_id, sig, result.decision or _wait(result.error), result.calls, result.error
        )
        cycle.ended, cycle.planned = ended, planned
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

    def _stale_orphans(self, state: State, number: int, trace_id: str) -> list[RunOutcome]:
        """After stale_orphan_cycles idle cycles, a training whose log has not grown since the idle streak
        began is a stale orphan: reported, and stopped when loop.stuck_wait_recovery is on."""
        settings = self.cfg.loop
        if self.idle_since is None or self.idle_streak < settings.stale_orphan_cycles:
            return []
        stopped = []
        for run in [r for r in state.active_runs if _last_output(r) < self.idle_since]:
            recover = settings.stuck_wait_recovery
            self.ws.append_event(
                number,
                trace_id,
                "stale_orphan",
                run_label=run.run_label,
                pid=run.pid,
                idle_cycles=self.idle_streak,
                stopped=recover,
            )
            if recover:
                stopped.append(self.executor.terminate(run))
        self._ended(state, stopped)
        return stopped

    def _ended(self, state: State, outcomes: list[RunOutcome]) -> None:
        if not outcomes:
            return
        labels = {o.run_label for o in outcomes}
        runs = {r.run_label: r for r in state.active_runs if r.run_label in labels}
        state.active_runs = [r for r in state.active_runs if r.run_label not in labels]
        state.last_training_end = self.clock()
        self.tracker.invalidate()
        self.new_evidence = True
        self.ws.save_state(state)
        for outcome in outcomes:
            if outcome.run_label in runs:
                self._repair(state, runs[outcome.run_label], outcome)

    def _repair(self, state: State, run: ActiveRun, outcome: RunOutcome) -> None:
        """Auto-repair: a first attempt that failed with a known fix runs once more (repair.py plans it)."""
        if run.attempt > 1:
            tags = {"agentexp.repair.retry_status": outcome.status}
            self._repair_evidence(run, "run_outcome_retry", tags, {"run": outcome.model_dump(mode="json")})
            return
        if self.ws.stop_requested():
            return
        python = repair.interpreter(self.cfg.repair, self.cfg.executor.python_exe)
        fix = repair.attempt(run, outcome, self.cfg.repair, python, self.ws.root / "repair_src")
        if fix is None:
            return
        fields = {"run_label": run.run_label, **fix.model_dump(mode="json"), "retried": fix.retry}
        self._repair_evidence(run, "auto_repair", fix.tags(), fields)
        if fix.retry:  # same label, cycle and parent decision; attempt 2 is never repaired again
            retry = self.executor.launch(
                run.run_label, fix.repair.overrides, run.cycle, run.cycle_trace_id, run.parent_run_id, 2
            )
            state.active_runs.append(retry)
            self.ws.save_state(state)

    def _repair_evidence(self, run: ActiveRun, event: str, tags: dict[str, str], fields: dict) -> None:
        """An event under the launching cycle, and tags on the decision run that launched the training."""
        self.ws.append_event(run.cycle, run.cycle_trace_id, event, **fields)
        if run.parent_run_id:
            set_tags(self.tracker.uri, run.parent_run_id, tags)

    def _context(self, state: State, number: int, sig: Signals, ended: list[RunOutcome]):
        failed = [o for o in ended if o.status == "failed"]
        return context_mod.build(
            self.ws,
            runs=self._run_view(),
            history=self.history[-HISTORY_WINDOW:],
            signals=sig,
            mission=self.mission,
            cycle=number,
            active_runs=[r.run_label for r in state.active_runs],
            deadline=self.finisher.deadline(self.clock()),
            failed_log_tail=failed[-1].error_tail if failed else "",
        )

    def _run_view(self) -> context_mod.RunView:
        rows = self.tracker.training_runs()
        if self._runs is None or self._runs.rows is not rows:  # a new list only after a training ended
            self._runs = context_mod.RunView(rows, self._runs)
        return self._runs

    def _count_calls(self, state: State, calls: list[CallRecord]) -> None:
        state.llm_calls += len(calls)
        state.cost_usd += sum(c.usage.cost_usd for c in calls)

    def _review(self, state: State, cycle: Cycle, ctx) -> None:
        if self.mentor is None or cycle.planned:
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
        if cycle.planned:  # a configuration that already ran, launched as recorded
            return
        decision = cycle.decision
        verdict = gate.check(decision, self.cfg.gate)
        violations = list(verdict.violations) + self.finisher.refusals(decision.action, self.clock())
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
            overrides = cycle.planned.overrides if cycle.planned else self._train_overrides(decision)
            run = self.executor.launch(label, overrides, cycle.number, cycle.trace_id, decision_run_id)
            state.active_runs.append(run)
            self.ws.save_state(state)  # a crash from here on still knows the process
            cycle.launched, cycle.outcome = label, "launched"
        elif decision.action == Action.ANALYZE:
            cycle.outcome = "analyzed"
        elif decision.action == Action.FINISH:
            cycle.outcome = "finished_loop"
        if state.active_runs and decision.action in (Action.TRAIN, Action.WAIT):
            seconds = self.executor.monitor_window(decision.monitor_seconds, runs_active=True)
            ended = self.executor.monitor(state.active_runs, seconds, self._beat(state), self._should_stop)
            self._ended(state, ended)
            cycle.ended += ended

    # ---- finish-up -------------------------------------------------------------------------------

    def _finish_up(self, state: State) -> str | None:
        """Before each cycle: at the deadline or after the final rounds, stop the trainings and report."""
        now = self.clock()
        if self.ws.stop_requested() or not self.finisher.report_due(bool(state.active_runs), now):
            return None
        stopped = sorted(run.run_label for run in state.active_runs)
        self._end_outside_cycle(state, [self.executor.terminate(r) for r in state.active_runs])  # KILLED
        self._heartbeat(status="reporting", cycle=state.cycle)
        done = self.finisher.report(now)
        if done is None:  # cancelled meanwhile
            return None
        fields = {"files": done.report_files, "error": done.error, "stopped": stopped}
        self.ws.append_event(state.cycle, "finish-up", "finish_up", **fields)
        return "finish_up"

    def _seed_result(self, state: State, planned: PlannedRun) -> WorkerResult:
        """The loop's own decision for a seed run; it watches briefly while more could start at once."""
        slots_left = len(state.active_runs) + 1 < self.cfg.executor.max_concurrent
        more = slots_left and self.finisher.more_now(self.clock())
        watch = 0 if more else self.cfg.executor.monitor_seconds_max
        return WorkerResult(decision=seed_decision(planned, watch), calls=[], error=None)

    def _should_stop(self) -> bool:
        return self.ws.stop_requested() or self.finisher.deadline_passed(self.clock())

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
        if chores.resolve_shared_todo_ids:  # each queue call reads the whole queue file
            self.todos.resolve(chores.resolve_shared_todo_ids)
        if chores.todo_new:
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
        idle = summary.outcome in ("waited", "downgraded")
        if idle and self.idle_since is None:
            self.idle_since = self.clock()
        self.idle_since = self.idle_since if idle else None
        self.idle_streak = self.idle_streak + 1 if idle else 0
        if cycle.mentor:
            self.ws.append_event(cycle.number, cycle.trace_id, "mentor", mentor=_mentor_event(cycle))
        if cycle.violations:
            self.ws.append_event(cycle.number, cycle.trace_id, "quality_gate", quality_gate=cycle.violations)
        for outcome in cycle.ended:
            self.ws.append_event(cycle.number, cycle.trace_id, "run_end", run=outcome.model_dump(mode="json"))
        self.tracker.log_calls(decision_run_id, "worker", cycle.calls)
        if cycle.mentor:
            self.tracker.log_calls(decision_run_id, "mentor", cycle.mentor.calls)
        self.tracker.log_decision(decision_run_id, *_decision_record(self.cfg, cycle))
        story = _story(cycle)
        # The commit point: a restart counts the cycle done once its cycle_end is written, and
        # completes the rest (state, storyline, decision run status) from it if a crash cuts in.
        self.ws.append_event(
            cycle.number,
            cycle.trace_id,
            "cycle_end",
            summary=summary.model_dump(mode="json"),
            decision_run_id=decision_run_id,
            story=story,
        )
        state.cycle = cycle.number
        self.ws.save_state(state)
        self.ws.append_storyline(cycle.number, cycle.trace_id, story)
        self.tracker.end_run(decision_run_id, "FINISHED", flush_traces=False)  # flushed at session end


def _last_output(run: ActiveRun) -> float:
    """When the training last wrote to its log."""
    return run.log_path.stat().st_mtime if run.log_path.exists() else run.started_at


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
