"""The loop: each cycle decides, reviews, gates, acts and records, and nothing else."""

from __future__ import annotations

import logging
import time

from agentexp import budget, context, gate, gpu, record, resume, signals
from agentexp.agents.mentor import Mentor, apply_review
from agentexp.agents.worker import Worker
from agentexp.config import LoopConfig
from agentexp.decisions import Action, WorkerDecision
from agentexp.events import CycleStart, MentorEvent, QualityGate
from agentexp.finisher import Finisher
from agentexp.launchers.base import RunOutcome
from agentexp.llm.base import ScriptExhausted
from agentexp.mission import Mission
from agentexp.record import Cycle
from agentexp.signals import CycleSummary, Signals
from agentexp.todos import TodoQueue
from agentexp.tracking import LOOP_DIRECTION, LOOP_METRIC, Tracker, trace_id_for
from agentexp.trainings import Trainings
from agentexp.workspace import State, Workspace

log = logging.getLogger(__name__)

HISTORY_WINDOW = 200
"""Cycles of history the signals and prompts look at; older ones live in MLflow."""


class Loop:
    def __init__(
        self,
        cfg: LoopConfig,
        mission: Mission,
        workspace: Workspace,
        tracker: Tracker,
        trainings: Trainings,
        worker: Worker,
        mentor: Mentor | None,
        finisher: Finisher,
        clock=time.time,
        read_gpus=gpu.gpu_utilization,
    ):
        self.cfg, self.mission, self.ws, self.tracker = cfg, mission, workspace, tracker
        self.trainings, self.worker, self.mentor, self.finisher = trainings, worker, mentor, finisher
        self.clock, self.read_gpus = clock, read_gpus
        self.todos = TodoQueue(workspace.artifacts)
        self.history: list[CycleSummary] = []
        self.idle_streak, self.idle_since = 0, None  # idle (wait/downgraded) cycles in a row; since when
        self.new_evidence, self.failure_tail = False, ""  # a training ended; the tail of the last failure
        self.started = clock()
        self.best: float | None = None  # the best metric a cycle saw end (the console line)
        self._runs: context.RunView | None = None

    # ---- session ---------------------------------------------------------------------------------

    def run(self) -> str:
        """Run up to max_cycles cycles, let running trainings finish, and return why the loop stopped."""
        with self.ws.lock():
            state = self._resume()
            reason = self._cycles(state)
            self._ended(self.trainings.drain(self._should_stop, self._beat(state.cycle)))  # bounded
            state.active_runs, state.stop_reason = [], reason
            self.ws.save_state(state)
            self.tracker.end_run(state.loop_run_id, "FINISHED")
            self._heartbeat(status="stopped", reason=reason, cycle=state.cycle)
            return reason

    def _cycles(self, state: State) -> str:
        for _ in range(self.cfg.loop.max_cycles):
            if reason := self._finish_up(state) or self._stop_reason(state):
                return reason
            try:
                if self.run_cycle(state) == Action.FINISH:
                    return "finish"
            except ScriptExhausted as err:
                log.info("%s", err)
                return "script_exhausted"
            time.sleep(self.cfg.loop.poll_seconds)
        return "max_cycles"

    def _resume(self) -> State:
        params = {
            "mission": self.mission.name,
            "llm": self.cfg.llm.name,
            "max_cycles": self.cfg.loop.max_cycles,
        }
        params |= {LOOP_METRIC: self.mission.summary_key, LOOP_DIRECTION: self.mission.direction}
        state, self.history = resume.session(self.ws, self.tracker, self.trainings, params)
        self.started = self.clock()
        return state

    def _stop_reason(self, state: State) -> str | None:
        if self.ws.stop_requested():
            return "stop_requested"
        hours = (self.clock() - self.started) / 3600
        return budget.spent(self.cfg.loop, state, self.trainings.spent, hours)

    # ---- one cycle -------------------------------------------------------------------------------

    def run_cycle(self, state: State) -> Action:
        number, trace = state.cycle + 1, trace_id_for(state.cycle + 1)
        self._heartbeat(status="running", cycle=number, cycle_trace_id=trace)
        self.ws.append_event(CycleStart(cycle=number, cycle_trace_id=trace))
        ended = self._ended(self.trainings.poll(number, trace, self.idle_streak, self.idle_since))
        history = self.history[-HISTORY_WINDOW:]
        sig = signals.compute(history, len(self.todos.open_items()), self.mission.direction)
        ctx = self._context(number, sig)
        seed_run = self.finisher.decide(self.trainings.free_slots(), self.clock())
        result = seed_run or self.worker.decide(ctx, self.ws.stop_requested)  # a stop cancels the call
        cycle = Cycle(number, trace, sig, result.decision or _wait(result.error), result.calls, result.error)
        cycle.ended, cycle.planned = ended, getattr(result, "planned", None)
        cycle.gpu = ctx.structured["gpu"]
        record.count_calls(state, cycle.calls)
        self._review(state, cycle, ctx)
        self._gate(cycle)
        run_id = self.tracker.start_decision(state.loop_run_id, number, trace)
        self._act(cycle, run_id)
        record.keep_house(self.ws, self.todos, cycle)
        self._record(state, cycle, run_id)
        return cycle.decision.action

    def _ended(self, outcomes: list[RunOutcome]) -> list[RunOutcome]:
        """What the agents learn from trainings that ended: new evidence, and the tail of a failure."""
        if outcomes:
            self.new_evidence = True
            last = outcomes[-1]
            self.failure_tail = last.error_tail if last.status == "failed" else ""
        return outcomes

    def _context(self, number: int, sig: Signals) -> context.Context:
        rows = self.tracker.training_runs()
        if self._runs is None or self._runs.rows is not rows:  # a new list only after a training ended
            self._runs = context.RunView(rows, self.mission.summary_key, self._runs)
        return context.build(
            self.ws,
            self._runs,
            history=self.history[-HISTORY_WINDOW:],
            signals=sig,
            mission=self.mission,
            cycle=number,
            active_runs=[r.run_label for r in self.trainings.active],
            deadline=self.finisher.deadline(self.clock()),
            failed_log_tail=self.failure_tail,
            max_concurrent=self.trainings.slots.count,
            code=self.trainings.code.prompt_view(),
            gpu=self.trainings.gpu_view(self.read_gpus()) if self.trainings.slots.gpus else [],
        )

    def _review(self, state: State, cycle: Cycle, ctx: context.Context) -> None:
        if self.mentor is None or cycle.planned:
            return
        busy = bool(self.trainings.active) and cycle.decision.action == Action.WAIT
        trigger = self.mentor.due(cycle.number, cycle.signals, busy, self.idle_streak, self.new_evidence)
        if trigger is None:
            return
        ctx.structured["decision"] = cycle.decision.model_dump(mode="json")
        cycle.mentor = self.mentor.review(cycle.decision, ctx, trigger, should_stop=self.ws.stop_requested)
        record.count_calls(state, cycle.mentor.calls)
        self.new_evidence = False
        cycle.decision, cycle.replaced = apply_review(cycle.decision, cycle.mentor.review, self.cfg.mentor)

    def _gate(self, cycle: Cycle) -> None:
        if cycle.planned:  # a configuration that already ran, launched as recorded
            return
        decision, cycle.patch = cycle.decision, cycle.decision.patch
        violations = gate.check(decision, self.cfg.gate).violations
        violations += self.finisher.refusals(decision.action, self.clock())
        overrides = self._train_overrides(decision)
        if decision.action == Action.TRAIN and not violations:
            violations = gate.launchable(overrides, self.trainings.free_slots())
        if decision.patch is not None and not violations:  # the patch's own gate, commit and preflight
            cycle.experiment, violations, tail = self.trainings.vet(
                decision, cycle.number, cycle.trace_id, overrides
            )
            self.failure_tail = tail or self.failure_tail
        if violations:
            cycle.violations, cycle.outcome = violations, "downgraded"
            cycle.decision = gate.downgrade(decision, gate.Verdict(passed=False, violations=violations))

    def _train_overrides(self, decision: WorkerDecision) -> list[str]:
        return [*self.cfg.loop.train_overrides, *self.mission.overrides, *decision.overrides]

    def _act(self, cycle: Cycle, decision_run_id: str) -> None:
        decision = cycle.decision
        if decision.action == Action.TRAIN:
            overrides = cycle.planned.overrides if cycle.planned else self._train_overrides(decision)
            label, number, trace, exp = decision.run_label, cycle.number, cycle.trace_id, cycle.experiment
            failed = self.trainings.launch(
                label, overrides, number, trace, decision_run_id, decision, experiment=exp
            )
            cycle.ended += self._ended([failed] if failed else [])
            cycle.launched, cycle.outcome = label, "launched"
        elif decision.action == Action.ANALYZE:
            cycle.outcome = "analyzed"
        elif decision.action == Action.FINISH:
            cycle.outcome = "finished_loop"
        full = decision.action == Action.WAIT or not self.trainings.free_slots()  # else: fill the free slot
        if self.trainings.active and decision.action in (Action.TRAIN, Action.WAIT) and full:
            seconds = self.trainings.monitor_window(decision.monitor_seconds, cycle.outcome == "waited")
            beat, first_end = self._beat(cycle.number), cycle.planned is None  # seed runs: watch them all
            cycle.ended += self._ended(self.trainings.watch(seconds, self._should_stop, beat, first_end))

    # ---- record ----------------------------------------------------------------------------------

    def _record(self, state: State, cycle: Cycle, decision_run_id: str) -> None:
        summary = record.summary(cycle, self.mission.direction)
        self.history.append(summary)
        idle = summary.outcome in ("waited", "downgraded")
        if idle and self.idle_since is None:
            self.idle_since = self.clock()
        self.idle_since = self.idle_since if idle else None
        self.idle_streak = self.idle_streak + 1 if idle else 0
        where = {"cycle": cycle.number, "cycle_trace_id": cycle.trace_id}
        if cycle.mentor:
            self.ws.append_event(MentorEvent(**where, mentor=record.mentor_record(cycle)))
            self.tracker.log_calls(decision_run_id, "mentor", cycle.mentor.calls)
        if cycle.violations:
            self.ws.append_event(QualityGate(**where, quality_gate=cycle.violations))
        self.tracker.log_calls(decision_run_id, "worker", cycle.calls)
        self.tracker.log_decision(decision_run_id, *record.decision_record(self.cfg, cycle))
        args = (cycle.number, cycle.trace_id, decision_run_id, summary, record.story(cycle))
        record.commit(self.ws, self.tracker, state, self.trainings.active, *args)
        self.best = record.better_of(summary.metric, self.best, self.mission.direction)
        log.info("%s", record.console_line(summary, cycle.ended, self.best, self.trainings.active))

    # ---- finish-up -------------------------------------------------------------------------------

    def _finish_up(self, state: State) -> str | None:
        if self.ws.stop_requested() or not (done := self.finisher.wrap_up(self.trainings, self.clock())):
            return None
        self.ws.append_event(done.model_copy(update={"cycle": state.cycle}))
        return "finish_up"

    def _should_stop(self) -> bool:
        return self.ws.stop_requested() or self.finisher.deadline_passed(self.clock())

    def _beat(self, cycle: int):
        return lambda: self._heartbeat(status="monitoring", cycle=cycle)

    def _heartbeat(self, **info) -> None:
        """Heartbeats also say where the store is and what runs, so `agentexp status` needs no config."""
        store = {"tracking_uri": self.tracker.uri, "experiment": self.tracker.experiment}
        store |= {"metric": self.mission.summary_key, "direction": self.mission.direction}
        self.ws.heartbeat(**store, active_runs=[record.active_info(r) for r in self.trainings.active], **info)


def _wait(error: str | None) -> WorkerDecision:
    return WorkerDecision(action=Action.WAIT, rationale=f"no valid decision from the worker: {error}"[:2000])
