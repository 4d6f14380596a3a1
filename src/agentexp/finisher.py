"""Finish-up in the loop: activate the schedule, hand out the final seed runs, write the report at the end."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pydantic import ValidationError

from agentexp import finishup, tracking
from agentexp.decisions import Action, WorkerDecision
from agentexp.finishup import FinishUp, PlannedRun
from agentexp.mission import Mission
from agentexp.workspace import Workspace, WorkspaceError

log = logging.getLogger(__name__)

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


def write_report(ws: Workspace, src, top_k: int) -> list[str]:
    """The final report from MLflow (`src`: a report.Source) into the workspace's artifacts/."""
    from agentexp import report

    return [str(path) for path in report.write_report(src, top_k, ws.root.parent)]


def conclude(ws: Workspace, src, f: FinishUp) -> FinishUp:
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


class Finisher:
    """The loop's view of FINISH_UP.json: read each time it is asked, so `agentexp finishup` acts at once."""

    def __init__(self, workspace: Workspace, tracker: tracking.Tracker, mission: Mission) -> None:
        self.ws, self.tracker, self.mission = workspace, tracker, mission
        self._warned = False

    def live(self, now: float) -> FinishUp | None:
        """The schedule once it is active (marked active here when its time has come), else None."""
        f = self._load()
        if f is None or not finishup.is_active(f, when(now)):
            return None
        if f.state == "scheduled":
            f.state = "active"
            self._save(f)
            log.info("finish-up active: deadline %s", finishup.stamp(f.deadline_utc))
        return f

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
        if action == Action.TRAIN and f.state != "active":
            return ["finish-up is running the final seed round: no new trainings until the report"]
        return []

    def next_run(self, has_capacity: bool, now: float) -> PlannedRun | None:
        """The next seed run to launch now, when a slot is free and it ends before the deadline."""
        f = self.live(now)
        if f is None or f.state != "training" or not f.pending or not has_capacity:
            return None
        while f.pending:
            planned = f.pending.pop(0)
            if finishup.fits(planned, when(now), f.deadline_utc):
                f.launched.append(planned.run_label)
                return planned if self._save(f) else None
            f.skipped.append(planned.run_label)
            log.info("finish-up: %s would end after the deadline; skipped", planned.run_label)
        self._save(f)
        return None

    def more_now(self, now: float) -> bool:
        """Whether seed runs are still waiting to be launched."""
        f = self.live(now)
        return f is not None and bool(f.pending)

    def report_due(self, runs_active: bool, now: float) -> bool:
        """True at the deadline, or once the final rounds are done; starts each round when its turn comes."""
        f = self.live(now)
        if f is None:
            return False
        if when(now) >= f.deadline_utc or f.state == "reporting":
            return True
        if f.state == "active" and f.final_training_rounds > 0:
            f.state = "training"
            self._plan(f)
        if f.state != "training" or f.pending or runs_active:
            return False
        if f.round < f.final_training_rounds:
            self._plan(f)
        return not f.pending

    def report(self, now: float) -> FinishUp | None:
        """Write the report and mark the schedule done (None when the user cancelled it meanwhile)."""
        f = self.live(now)
        if f is None:
            return None
        from agentexp import report

        src = report.Source(
            uri=self.tracker.uri,
            experiment=self.tracker.experiment,
            metric=self.mission.summary_key,
            direction=self.mission.direction,
        )
        return conclude(self.ws, src, f)

    def _plan(self, f: FinishUp) -> None:
        rows = tracking.run_table(
            self.tracker.uri,
            self.tracker.experiment_id,
            "train",
            metrics=(self.mission.summary_key,),
            tags=(tracking.OVERRIDES, tracking.SEED),
        )
        f.round += 1
        f.pending = finishup.seed_plan(
            rows,
            f.top_k,
            f.seeds_per_candidate,
            metric=self.mission.summary_key,
            direction=self.mission.direction,
        )
        if not f.pending:  # every top candidate has its seeds: later rounds would plan nothing either
            f.round = f.final_training_rounds
        log.info("finish-up round %d: %d seed runs planned", f.round, len(f.pending))
        self._save(f)

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


def force_report(ws: Workspace, src, top_k: int | None, now: datetime) -> FinishUp:
    """Report now without final training, then mark the schedule done (one is recorded if none exists).

    A report that cannot be made raises report.ReportError and leaves the schedule as it was.
    """
    f = load(ws) or FinishUp(deadline_utc=now, activate_at_utc=now, created_at=now, note="forced report")
    f.top_k = top_k or f.top_k
    f.report_files = write_report(ws.create(), src, f.top_k)
    f.state, f.pending, f.error = "done", [], None
    save(ws, f)
    return f
