"""Finish-up in the loop: activate the schedule, hand out the final seed runs, write the report at the end."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pydantic import ValidationError

from agentexp import finishup, ranking, tracking
from agentexp.agents.worker import WorkerResult
from agentexp.decisions import Action, WorkerDecision
from agentexp.events import FinishUpDone
from agentexp.finishup import FinishUp, PlannedRun
from agentexp.trainings import Trainings
from agentexp.workspace import Workspace, WorkspaceError

log = logging.getLogger(__name__)

SEED_WATCH_S = 600
"""How long a seed cycle watches when no other seed run could start now (the monitor bound clamps it)."""
MAX_DECISION_OVERRIDES = 20
"""WorkerDecision's limit; a longer recorded configuration is launched whole but recorded cut."""


def load(ws: Workspace) -> FinishUp | None:
    """The stored schedule, or None; a file that is not a schedule is a WorkspaceError."""
    data = ws.read_finishup()
    if data is None:
        return None
    try:
        return FinishUp.model_validate(data)
    except ValidationError as exc:
        msg = f"{ws.finishup_path} is not a finish-up schedule ({exc.error_count()} errors)"
        raise WorkspaceError(msg + "; schedule finish-up again or --cancel it") from exc


def save(ws: Workspace, f: FinishUp) -> None:
    ws.write_finishup(f.model_dump(mode="json"))


def when(now: float) -> datetime:
    """A loop clock reading as a UTC datetime."""
    return datetime.fromtimestamp(now, UTC)


def write_report(ws: Workspace, src: tracking.Source, top_k: int) -> list[str]:
    """The final report from MLflow into the workspace's artifacts/, once the top-k are scored on the
    held-out test data (when their trainings had it configured)."""
    from agentexp import evaluate, report

    evaluate.score_top(src, top_k)
    return [str(path) for path in report.write_report(src, top_k, ws)]


def conclude(ws: Workspace, src: tracking.Source, f: FinishUp) -> FinishUp:
    """Write the final report and mark the schedule done; why a report could not be made is kept as error."""
    from agentexp.report import ReportError

    f.state = "reporting"
    save(ws, f)
    try:
        f.report_files, f.error = write_report(ws, src, f.top_k), None
    except ReportError as err:
        f.error = str(err)
    f.state = "done"
    save(ws, f)
    return f


def seed_decision(planned: PlannedRun, monitor_seconds: int) -> WorkerDecision:
    """The loop's own train decision for one seed run (recorded like the worker's)."""
    return WorkerDecision(
        action=Action.TRAIN,
        rationale=f"finish-up: seed {planned.seed} for candidate {planned.candidate}",
        run_label=planned.run_label,
        overrides=planned.overrides[-MAX_DECISION_OVERRIDES:],
        monitor_seconds=monitor_seconds,
        strategy_dimension="evaluation",
    )


class SeedResult(WorkerResult):
    """The loop's own decision for a finish-up seed run: no LLM, mentor or gate."""

    planned: PlannedRun
    """The seed run, launched with its recorded configuration as is."""


class Finisher:
    """The loop's side of FINISH_UP.json, read each time it is asked so `agentexp finishup` acts at once.

    Queries are pure; `advance` and `decide` are the only ones that write the schedule."""

    def __init__(self, workspace: Workspace, src: tracking.Source) -> None:
        self.ws, self.src = workspace, src
        self._warned = False

    def live(self, now: float) -> FinishUp | None:
        """The schedule once its activation time has come (until it is done or cancelled), else None."""
        f = self._load()
        return f if f is not None and finishup.is_active(f, when(now)) else None

    def deadline(self, now: float) -> str | None:
        """The deadline as the prompts show it, while finish-up is active."""
        f = self.live(now)
        return finishup.deadline_text(f, when(now)) if f else None

    def deadline_passed(self, now: float) -> bool:
        f = self.live(now)
        return f is not None and when(now) >= f.deadline_utc

    def refusals(self, action: Action, now: float) -> list[str]:
        """Why an agent decision may not run while finish-up is active ([] when it may)."""
        f = self.live(now)
        if f is None:
            return []
        if action == Action.FINISH:
            return ["finish-up is active: the loop ends the session itself once the report is written"]
        if action == Action.TRAIN and f.state == "training":
            return ["finish-up is running the final seed round: no new trainings until the report"]
        return []

    def report_due(self, runs_active: bool, now: float) -> bool:
        """True at the deadline, or once the final rounds are planned, launched and ended."""
        f = self.live(now)
        if f is None:
            return False
        if when(now) >= f.deadline_utc or f.state == "reporting":
            return True
        last_round = f.round >= f.final_training_rounds
        return f.state == "training" and last_round and not f.pending and not runs_active

    def advance(self, runs_active: bool, now: float) -> None:
        """Move the schedule on: mark it active, then plan each final round once the previous one ended."""
        f = self.live(now)
        if f is None:
            return
        before = f.model_copy(deep=True)
        if f.state == "scheduled":
            f.state = "active"
            log.info("finish-up active: deadline %s", finishup.stamp(f.deadline_utc))
        if f.state == "active" and f.final_training_rounds > 0:
            f.state = "training"
            self._plan(f)
        elif f.state == "training" and not (f.pending or runs_active) and f.round < f.final_training_rounds:
            self._plan(f)
        if f != before:
            self._save(f)

    def decide(self, free_slots: int, now: float) -> SeedResult | None:
        """The next seed run when a slot is free and it ends before the deadline; it watches briefly
        while more could start at once."""
        f = self.live(now)
        if f is None or f.state != "training" or not f.pending or free_slots <= 0:
            return None
        while f.pending:
            planned = f.pending.pop(0)
            if finishup.fits(planned, when(now), f.deadline_utc):
                f.launched.append(planned.run_label)
                if not self._save(f):
                    return None
                watch = 0 if free_slots > 1 and f.pending else SEED_WATCH_S
                return SeedResult(
                    decision=seed_decision(planned, watch), calls=[], error=None, planned=planned
                )
            f.skipped.append(planned.run_label)
            log.info("finish-up: %s would end after the deadline; skipped", planned.run_label)
        self._save(f)
        return None

    def wrap_up(self, trainings: Trainings, now: float) -> FinishUpDone | None:
        """Before each cycle: move the schedule on; at the deadline or after the final rounds, stop the
        trainings (they end KILLED) and write the report. The event to record when it did, else None."""
        busy = bool(trainings.active)
        self.advance(busy, now)
        if not self.report_due(busy, now):
            return None
        stopped = sorted(run.run_label for run in trainings.active)
        trainings.stop_all()
        f = self.live(now)
        if f is None:  # cancelled meanwhile
            return None
        done = conclude(self.ws, self.src, f)
        return FinishUpDone(
            cycle=0, cycle_trace_id="finish-up", files=done.report_files, error=done.error, stopped=stopped
        )

    def _plan(self, f: FinishUp) -> None:
        experiment_id = tracking.find_experiment(self.src.uri, self.src.experiment)
        rows = tracking.run_table(
            self.src.uri,
            experiment_id,
            "train",
            metrics=(self.src.metric,),
            tags=(*ranking.KEY_TAGS, tracking.SEED),
        )
        f.round += 1
        f.pending = finishup.seed_plan(
            rows, f.top_k, f.seeds_per_candidate, metric=self.src.metric, direction=self.src.direction
        )
        if not f.pending:  # every top candidate has its seeds: later rounds would plan nothing either
            f.round = f.final_training_rounds
        log.info("finish-up round %d: %d seed runs planned", f.round, len(f.pending))
        if note := ranking.split_note(rows, self.src.metric):
            log.info("finish-up: %s", note)

    def _load(self) -> FinishUp | None:
        try:
            return load(self.ws)
        except WorkspaceError as err:
            if not self._warned:
                log.warning("finish-up ignored: %s", err)
                self._warned = True
            return None

    def _save(self, f: FinishUp) -> bool:
        """Write the loop's progress unless the user replaced or cancelled the schedule since it was read."""
        current = self._load()
        if current is None or current.created_at != f.created_at or current.state in ("cancelled", "done"):
            return False
        save(self.ws, f)
        return True


def cancel(ws: Workspace) -> str:
    """Cancel the schedule (kept, marked cancelled); the line to print."""
    f = load(ws)
    if f is None or f.state in ("done", "cancelled"):
        return f"no finish-up to cancel ({f.state if f else 'none scheduled'})"
    f.state = "cancelled"
    save(ws, f)
    return "finish-up cancelled"


def force_report(ws: Workspace, src: tracking.Source, top_k: int | None, now: datetime) -> FinishUp:
    """Report now without final training, then mark the schedule done (one is recorded if none exists).

    A report that cannot be made raises report.ReportError and leaves the schedule as it was.
    """
    f = load(ws) or FinishUp(deadline_utc=now, activate_at_utc=now, created_at=now, note="forced report")
    f.top_k = top_k or f.top_k
    f.report_files = write_report(ws.create(), src, f.top_k)
    f.state, f.pending, f.error = "done", [], None
    save(ws, f)
    return f
