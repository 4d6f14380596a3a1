"""The life of every training: launch, poll, watch, stop and drain, their events, stale orphans, the
single repair retry, and picking up after a crash. The only caller of the launchers."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agentexp import repair, tracking
from agentexp.codebase import Experiment
from agentexp.decisions import WorkerDecision
from agentexp.events import (
    AutoRepair,
    Event,
    Launch,
    Launched,
    LaunchIntent,
    RetryOutcome,
    RunEnd,
    StaleOrphan,
)
from agentexp.experiments import Experiments
from agentexp.launchers.base import (
    LAUNCH_PREFIX,
    ActiveRun,
    Handle,
    Launcher,
    LauncherError,
    LaunchSpec,
    RunOutcome,
    header_is,
    judge,
    run_to_end,
    this_launch,
    training_argv,
    training_env,
)
from agentexp.launchers.slots import Gpus, Slots
from agentexp.pruning import PruneConfig, Pruner
from agentexp.repair import RepairConfig
from agentexp.workspace import Workspace

log = logging.getLogger(__name__)

Beat = Callable[[], None]
StopCheck = Callable[[], bool]


class ExecutorConfig(BaseModel):
    """The `executor:` section of conf/loop.yaml: what a training runs and how the loop watches it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    python_exe: str | None = None
    """Interpreter that runs the trainer; None = the loop's own (sys.executable)."""
    trainer_module: str = "trainers.train"
    """Module run with `python -m`."""
    max_concurrent: int = Field(1, ge=1)
    """Most trainings running at once (at most one per GPU where there are GPUs)."""
    gpus: Gpus = "auto"
    """GPUs the slots use, one each: `auto` = every GPU NVML finds (none: the slots share the cores)."""
    cpu_threads: int | None = Field(None, ge=1)
    """Threads per training (OMP_NUM_THREADS); None = the cores divided by the slots."""
    monitor_seconds_default: int = Field(20, ge=0)
    """Seconds to watch when a decision says 0 while runs are active."""
    monitor_seconds_max: int = Field(600, ge=0)
    """Decisions asking to watch longer are cut to this."""
    poll_interval_s: float = Field(1.0, gt=0)
    """Seconds between two looks at the running trainings."""
    prune: PruneConfig = PruneConfig()
    """Multi-fidelity: stop a training behind the others at the same epoch (see agentexp.pruning)."""
    stop_grace_s: float = Field(30.0, ge=0)
    """Seconds between SIGTERM and SIGKILL when stopping a training."""


class Trainings:
    """Every training of a loop session, from the intent to launch to its run_end event."""

    def __init__(
        self,
        workspace: Workspace,
        launcher: Launcher,
        cfg: ExecutorConfig,
        repair_cfg: RepairConfig,
        tracker: tracking.Tracker,
        stale_after_cycles: int = 5,
        stop_stale: bool = False,
        code: Experiments | None = None,
        pruner: Pruner | None = None,
        slots: Slots | None = None,
    ) -> None:
        self.ws, self.launcher, self.cfg, self.repair_cfg = workspace, launcher, cfg, repair_cfg
        self.slots = slots or Slots.here(cfg.max_concurrent, cfg.gpus, cfg.cpu_threads)
        self.tracker, self.code, self.pruner = tracker, code, pruner
        self.stale_after_cycles, self.stop_stale = stale_after_cycles, stop_stale
        self.active: list[ActiveRun] = []
        self.spent = 0.0
        """First attempts launched by this process, a pruned one counting as the share of its epochs it
        ran (the loop.max_trainings budget)."""

    # launching -----------------------------------------------------------------------------------

    def launch(
        self,
        run_label: str,
        overrides: list[str],
        cycle: int,
        trace: str,
        parent_run_id: str | None,
        decision: WorkerDecision | None = None,
        attempt: int = 1,
        experiment: Experiment | None = None,
        confirms: bool = False,
    ) -> RunOutcome | None:
        """Start a training (of a code experiment's commit, else of the incumbent's code); None when it
        runs, else how it failed to start (recorded as its run_end)."""
        name = f"{run_label}-{trace}" + (f"-a{attempt}" if attempt > 1 else "")
        code = {"code_dir": self.code.code_dir(experiment) if self.code else None, "experiment": experiment}
        intent = LaunchIntent(
            run_label=run_label,
            attempt=attempt,
            overrides=list(overrides),
            parent_run_id=parent_run_id,
            run_dir=self.ws.root.resolve() / "runs" / name,
            decision=decision,
            confirms=confirms,
            gpu=self.slots.gpu_for(run.gpu for run in self.active),
            **code,
        )
        self.ws.append_event(Launch(cycle=cycle, cycle_trace_id=trace, run=intent))
        return self._start(intent, cycle, trace)

    def _spec(
        self, intent: LaunchIntent, trace: str, kind: str | None = None, log_name: str = ""
    ) -> LaunchSpec:
        python, code = self.cfg.python_exe or sys.executable, intent.code_dir
        argv = training_argv(
            python, self.cfg.trainer_module, intent.overrides, intent.run_label, intent.run_dir, code
        )
        env = training_env(self.tracker.uri, self.tracker.experiment, trace, intent.parent_run_id, kind, code)
        env |= self.slots.env(intent.gpu)
        if code is not None:  # the trainer tags which code it ran
            exp = intent.experiment
            env[tracking.ENV_CODE_COMMIT] = exp.commit if exp else self.code.codebase.incumbent()
            env[tracking.ENV_CODE_BRANCH] = exp.branch if exp else self.code.codebase.best
        box = (
            self.code.box(intent.run_dir, self.tracker.uri)
            if self.code and self.code.sandboxed(code)
            else None
        )
        log_path = self.ws.create().log_path(log_name or intent.run_label)
        return LaunchSpec(
            run_label=intent.run_label,
            argv=argv,
            env=env,
            log_path=log_path,
            run_dir=intent.run_dir,
            sandbox=box,
        )

    def _start(self, intent: LaunchIntent, cycle: int, trace: str) -> RunOutcome | None:
        spec = self._spec(intent, trace)
        header = {"cycle": cycle, "cycle_trace_id": trace, "attempt": intent.attempt, "argv": spec.argv}
        with spec.log_path.open("a", encoding="utf-8") as sink:
            sink.write(f"{LAUNCH_PREFIX} {json.dumps(header)}\n")
        try:
            handle = self.launcher.start(spec)
        except LauncherError as err:
            outcome = RunOutcome(
                run_label=intent.run_label, status="failed", returncode=None, error_tail=str(err)
            )
            self.ws.append_event(
                RunEnd(cycle=cycle, cycle_trace_id=trace, run=outcome, run_dir=intent.run_dir)
            )
            return outcome
        self._adopt(intent, handle, cycle, trace, spec)
        log.debug("launched %s (pid %d, cycle %d)", intent.run_label, handle.pid, cycle)
        return None

    def _adopt(
        self, intent: LaunchIntent, handle: Handle, cycle: int, trace: str, spec: LaunchSpec
    ) -> ActiveRun:
        run = _active(intent, handle, spec.log_path, cycle, trace)
        self.ws.append_event(Launched(cycle=cycle, cycle_trace_id=trace, run=run))
        self.active.append(run)
        self.spent += intent.attempt == 1
        return run

    def free_slots(self) -> int:
        """Training slots not taken by a running training."""
        return max(0, self.slots.count - sum(self.launcher.running(run) for run in self.active))

    def gpu_view(self, readings: list[dict]) -> list[dict]:
        """Each slot's GPU with the run on it and its NVML reading (empty on CPU)."""
        return self.slots.view({r.gpu: r.run_label for r in self.active if r.gpu is not None}, readings)

    def monitor_window(self, requested: int, wait: bool = False) -> float:
        """Seconds to watch for a decision's `monitor_seconds`: the default for 0 while runs are active;
        a `wait` the worker chose (not a gate downgrade) watches as long as the bound allows (the watch
        ends when a run does)."""
        if wait and self.active:
            requested = self.cfg.monitor_seconds_max
        elif requested <= 0 and self.active:
            requested = self.cfg.monitor_seconds_default
        return float(min(max(requested, 0), self.cfg.monitor_seconds_max))

    # watching ------------------------------------------------------------------------------------

    def poll(self, cycle: int, trace: str, idle_streak: int, idle_since: float | None) -> list[RunOutcome]:
        """The trainings that ended since the last look, stale orphans included (reported, maybe stopped)."""
        return self._ended(self._look() + self._stale(cycle, trace, idle_streak, idle_since))

    def watch(
        self, seconds: float, should_stop: StopCheck, beat: Beat, first_end: bool = True
    ) -> list[RunOutcome]:
        """Watch the running trainings for up to `seconds` (clamped), beating, until one of them ends (the
        next cycle decides on that evidence and its free slot), or with `first_end` False until all have;
        return those that ended."""
        deadline = time.monotonic() + min(max(seconds, 0.0), self.cfg.monitor_seconds_max)
        ended: list[RunOutcome] = []
        while True:
            ended += self._ended(self._look())
            beat()
            left = deadline - time.monotonic()
            if (ended and first_end) or not self.active or left <= 0 or should_stop():
                return ended
            time.sleep(min(self.cfg.poll_interval_s, left))

    def _look(self) -> list[tuple[ActiveRun, RunOutcome]]:
        """The trainings that ended, and those the pruner stopped (KILLED, tagged agentexp.pruned=true)."""
        ended = [(run, outcome) for run in self.active if (outcome := self.launcher.poll(run))]
        running = [run for run in self.active if all(run is not r for r, _ in ended)]
        for stop in self.pruner.behind(running) if self.pruner else []:
            outcome = self.launcher.terminate(stop.run)
            ended.append((stop.run, outcome))
            if outcome.status == "killed":  # not when it finished meanwhile
                self.tracker.set_tags(stop.run_id, {tracking.PRUNED: "true"})
                self.spent -= 1.0 - stop.share
        return ended

    def stop_all(self) -> list[RunOutcome]:
        """Stop every running training (their runs end KILLED)."""
        return self._ended([(run, self.launcher.terminate(run)) for run in list(self.active)])

    def drain(self, should_stop: StopCheck, beat: Beat) -> list[RunOutcome]:
        """Let the running trainings finish (bounded by their own timeout); stop them when asked to."""
        ended: list[RunOutcome] = []
        while self.active:
            if should_stop():
                ended += self.stop_all()
            else:
                ended += self.watch(self.cfg.monitor_seconds_max, should_stop, beat, first_end=False)
        return ended

    def _stale(self, cycle: int, trace: str, idle_streak: int, idle_since: float | None) -> list:
        """After stale_after_cycles idle cycles, a training whose log has not grown since the idle streak
        began is a stale orphan: reported, and stopped when loop.stuck_wait_recovery is on."""
        if idle_since is None or idle_streak < self.stale_after_cycles:
            return []
        stopped = []
        for run in [r for r in self.active if _last_output(r) < idle_since]:
            event = StaleOrphan(
                cycle=cycle,
                cycle_trace_id=trace,
                run_label=run.run_label,
                pid=run.pid,
                idle_cycles=idle_streak,
                stopped=self.stop_stale,
            )
            self.ws.append_event(event)
            if self.stop_stale:
                stopped.append((run, self.launcher.terminate(run)))
        return stopped

    def _ended(self, pairs: list[tuple[ActiveRun, RunOutcome]]) -> list[RunOutcome]:
        """Record each end under the cycle that launched the run, then retry what has a known fix."""
        if not pairs:
            return []
        outcomes = []
        for run, outcome in pairs:
            self.active = [r for r in self.active if r.run_dir != run.run_dir]
            if outcome.mlflow_run_id is None:  # it ended before printing its summary: its tags know
                found = self.tracker.run_by_tag(tracking.RUN_DIR, str(run.run_dir))
                outcome = outcome.model_copy(update={"mlflow_run_id": found})
            if outcome.mlflow_run_id and outcome.status != "finished":  # e.g. SIGKILLed before its end_run
                self.tracker.end_if_running(outcome.mlflow_run_id, outcome.status.upper())  # KILLED, FAILED
            self.ws.append_event(
                RunEnd(cycle=run.cycle, cycle_trace_id=run.cycle_trace_id, run=outcome, run_dir=run.run_dir)
            )
            outcomes.append(outcome)
        self.tracker.invalidate()
        for (run, _), outcome in zip(pairs, outcomes, strict=True):
            if run.experiment is not None and self.code is not None:
                self._code_end(run, outcome)
            self._repair(run, outcome)
        return outcomes

    # code experiments -----------------------------------------------------------------------------

    def vet(self, decision: WorkerDecision, cycle: int, trace: str, overrides: list[str]):
        """A decision's patch made into a preflighted experiment (see Experiments.vet)."""
        return self.code.vet(decision, cycle, trace, overrides, self.preflight)

    def preflight(self, label: str, overrides: list[str], trace: str, exp: Experiment) -> RunOutcome | None:
        """One train and one validation batch of the experiment, sandboxed; its outcome when it did not
        finish (a crash here costs seconds, not a run), else None."""
        intent = self.code.preflight_intent(label, overrides, trace, exp, self.ws.root.resolve() / "runs")
        intent.gpu = self.slots.gpu_for(run.gpu for run in self.active)
        outcome = run_to_end(self.launcher, self._spec(intent, trace, "preflight", f"{label}.preflight"))
        return None if outcome.status == "finished" else outcome

    def _code_end(self, run: ActiveRun, outcome: RunOutcome) -> None:
        """Judge a code experiment's training: kept, discarded, or a confirmation run with another seed."""
        event, tags, confirm = self.code.end(run, outcome, self.tracker.training_runs())
        self.ws.append_event(event)
        if outcome.mlflow_run_id:
            self.tracker.set_tags(outcome.mlflow_run_id, tags)
        if confirm is not None:
            label = f"{run.run_label}-confirm"[:80]
            self.launch(
                label,
                confirm,
                run.cycle,
                run.cycle_trace_id,
                run.parent_run_id,
                experiment=run.experiment,
                confirms=True,
            )

    # the single repair retry ---------------------------------------------------------------------

    def _repair(self, run: ActiveRun, outcome: RunOutcome) -> None:
        """Auto-repair: a first attempt that failed with a known fix runs once more (repair.py plans it)."""
        if run.attempt > 1:
            tags = {"agentexp.repair.retry_status": outcome.status}
            self._evidence(
                run, RetryOutcome(cycle=run.cycle, cycle_trace_id=run.cycle_trace_id, run=outcome), tags
            )
            return
        if self.ws.stop_requested():
            return
        python = repair.interpreter(self.repair_cfg, self.cfg.python_exe)
        fix = repair.attempt(run, outcome, self.repair_cfg, python, self.ws.root / "repair_src")
        if fix is None:
            return
        event = AutoRepair(
            cycle=run.cycle,
            cycle_trace_id=run.cycle_trace_id,
            run_label=run.run_label,
            failure=fix.failure,
            repair=fix.repair,
            error=fix.error,
            retried=fix.retry,
        )
        self._evidence(run, event, fix.tags())
        if fix.retry:  # same label, cycle and parent decision; attempt 2 is never repaired again
            self.launch(
                run.run_label,
                fix.repair.overrides,
                run.cycle,
                run.cycle_trace_id,
                run.parent_run_id,
                attempt=2,
            )

    def _evidence(self, run: ActiveRun, event: Event, tags: dict[str, str]) -> None:
        """An event under the launching cycle, and tags on the decision run that launched the training."""
        self.ws.append_event(event)
        if run.parent_run_id:
            self.tracker.set_tags(run.parent_run_id, tags)

    # after a crash -------------------------------------------------------------------------------

    def resume(self, events: list[Event], committed: int) -> list[Launch]:
        """Pick up every training the journal shows launched and not ended; start or adopt what a crash
        cut off between the intent and the process. Returns the launches of the uncommitted cycle."""
        ended = {str(e.run_dir) for e in events if isinstance(e, RunEnd) and e.run_dir}
        launched = {str(e.run.run_dir): e for e in events if isinstance(e, Launched)}
        self.active = [e.run for key, e in launched.items() if key not in ended]
        intents = [e for e in events if isinstance(e, Launch)]
        for e in intents:
            if str(e.run.run_dir) not in ended and str(e.run.run_dir) not in launched:
                self._recover(e)
        return [e for e in intents if e.cycle > committed and e.run.attempt == 1]

    def _recover(self, e: Launch) -> None:
        """An intent with no process on record: adopt the process if it lives, judge it if it ran, else
        start it now (what the cycle decided)."""
        spec = self._spec(e.run, e.cycle_trace_id)
        handle = self.launcher.find(spec)
        if handle is not None:
            self._adopt(e.run, handle, e.cycle, e.cycle_trace_id, spec)
            return
        if this_launch(spec.log_path) and header_is(spec.log_path, e.cycle_trace_id, e.run.attempt):
            run = _active(e.run, Handle(pid=0, started_at=0.0), spec.log_path, e.cycle, e.cycle_trace_id)
            self._ended([(run, judge(run, None, stopped=False))])
            return
        self._start(e.run, e.cycle, e.cycle_trace_id)


def _active(intent: LaunchIntent, handle: Handle, log_path: Path, cycle: int, trace: str) -> ActiveRun:
    fields = intent.model_dump(exclude={"decision"})
    return ActiveRun(**fields, handle=handle, log_path=log_path, cycle=cycle, cycle_trace_id=trace)


def _last_output(run: ActiveRun) -> float:
    """When the training last wrote to its log."""
    return run.log_path.stat().st_mtime if run.log_path.exists() else run.started_at
