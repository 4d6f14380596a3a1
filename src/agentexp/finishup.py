"""The finish-up schedule (FINISH_UP.json) and the final seed round: pure functions of time and runs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from agentexp import ranking, tracking

DEFAULT_WINDOW_MIN = 60.0
"""Minutes between activation and deadline when only the activation time is given."""
LAUNCH_OVERHEAD_S = 15.0
"""Seconds a training spends before its MLflow run opens (interpreter, imports, data)."""
MAX_LABEL = 80
_SEED_SUFFIX = re.compile(r"-seed\d+$")

Phase = Literal["scheduled", "active", "training", "reporting", "done", "cancelled"]
LIVE: tuple[Phase, ...] = ("active", "training", "reporting")


class FinishUpError(Exception):
    """A finish-up request that cannot be scheduled, stated in one sentence."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class PlannedRun(_Strict):
    """One extra seed run of a leaderboard candidate."""

    run_label: str
    """Label of the new run: the candidate's label with `-seed<S>`."""
    overrides: list[str]
    """The candidate's recorded configuration plus `trainer.seed=<S>`; launched as is."""
    seed: int
    candidate: str
    """Label of the candidate's best run."""
    estimate_s: float | None = None
    """Longest recorded duration of the candidate's runs plus launch overhead; None when unknown."""


class FinishUp(_Strict):
    """The finish-up schedule and how far the loop got with it."""

    deadline_utc: AwareDatetime
    """When the session's results are due: running trainings are stopped and the report is written."""
    activate_at_utc: AwareDatetime
    """From then on prompts carry the deadline and the final round(s) start."""
    final_training_rounds: int = Field(1, ge=0)
    """Rounds of extra seed runs for the top candidates (0: the agents go on until the deadline)."""
    top_k: int = Field(10, ge=1)
    """Candidates that get seed runs; rows of the final leaderboard."""
    seeds_per_candidate: int = Field(3, ge=1)
    """Finished seed runs each top-k candidate ends with."""
    note: str = ""
    created_at: AwareDatetime
    state: Phase = "scheduled"
    round: int = 0
    """Final rounds planned so far."""
    pending: list[PlannedRun] = []
    """Seed runs of the current round not launched yet."""
    launched: list[str] = []
    """Labels of the seed runs the loop launched."""
    skipped: list[str] = []
    """Labels of planned seed runs left out because they would end after the deadline."""
    report_files: list[str] = []
    error: str | None = None
    """Why no report was written, when none was."""


def utc(text: str) -> datetime:
    """An ISO 8601 time such as 2026-12-01T22:00:00Z; one without a zone is read as UTC."""
    try:
        found = datetime.fromisoformat(text.strip())
    except ValueError:
        raise FinishUpError(f"{text!r} is not an ISO 8601 time such as 2026-12-01T22:00:00Z") from None
    return found.replace(tzinfo=UTC) if found.tzinfo is None else found.astimezone(UTC)


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def schedule(
    now: datetime,
    minutes_left: float | None = None,
    run_hours: float | None = None,
    activate_in_minutes: float | None = None,
    activate_at_utc: datetime | str | None = None,
    final_training_rounds: int = 1,
    top_k: int = 10,
    seeds_per_candidate: int = 3,
    note: str = "",
) -> FinishUp:
    """A schedule from the CLI's options.

    The deadline is `now + run_hours` when given, else activation + minutes_left (default 60 min);
    activation is the given time, else `deadline - minutes_left` with run_hours, else now.
    """
    when = (minutes_left, run_hours, activate_in_minutes, activate_at_utc)
    if all(value is None for value in when):
        raise FinishUpError(
            "say when: --minutes-left, --run-hours, --activate-in-minutes or --activate-at-utc"
        )
    for name, value in (("minutes-left", minutes_left), ("run-hours", run_hours)):
        if value is not None and value <= 0:
            raise FinishUpError(f"--{name} must be positive, got {value:g}")
    if activate_in_minutes is not None and activate_at_utc is not None:
        raise FinishUpError("give --activate-in-minutes or --activate-at-utc, not both")
    activate = _activation(now, activate_in_minutes, activate_at_utc)
    window = minutes_left or DEFAULT_WINDOW_MIN
    if run_hours is not None:
        deadline = now + timedelta(hours=run_hours)
        if activate is None:
            activate = deadline - timedelta(minutes=window)
    else:
        activate = activate or now
        deadline = activate + timedelta(minutes=window)
    if activate < now:
        raise FinishUpError(
            f"finish-up would activate at {stamp(activate)}, before now ({stamp(now)}): "
            f"{window:g} minutes left is longer than --run-hours {run_hours:g}"
        )
    if deadline <= activate:
        raise FinishUpError(f"the deadline {stamp(deadline)} is not after the activation {stamp(activate)}")
    return FinishUp(
        deadline_utc=deadline,
        activate_at_utc=activate,
        final_training_rounds=final_training_rounds,
        top_k=top_k,
        seeds_per_candidate=seeds_per_candidate,
        note=note,
        created_at=now,
    )


def _activation(now: datetime, in_minutes: float | None, at: datetime | str | None) -> datetime | None:
    if in_minutes is not None:
        if in_minutes < 0:
            raise FinishUpError(f"--activate-in-minutes must not be negative, got {in_minutes:g}")
        return now + timedelta(minutes=in_minutes)
    if at is None:
        return None
    when = utc(at) if isinstance(at, str) else at.astimezone(UTC)
    if when < now:
        raise FinishUpError(f"--activate-at-utc {stamp(when)} is in the past (now {stamp(now)})")
    return when


def is_active(f: FinishUp, now: datetime) -> bool:
    """True from the activation time until the report is done (a cancelled schedule never is)."""
    return f.state not in ("done", "cancelled") and now >= f.activate_at_utc


def deadline_text(f: FinishUp, now: datetime) -> str:
    """The deadline as the prompts show it."""
    minutes = (f.deadline_utc - now).total_seconds() / 60
    left = f"{minutes:.0f} min left" if minutes > 0 else "passed"
    note = f"; {f.note}" if f.note else ""
    return f"{stamp(f.deadline_utc)} ({left}{note})"


def describe(f: FinishUp, now: datetime) -> str:
    """A few lines for `agentexp finishup --show`."""
    lines = [
        f"state: {f.state}",
        f"activates: {stamp(f.activate_at_utc)}" + (" (active)" if is_active(f, now) else ""),
        f"deadline: {deadline_text(f, now)}",
        f"final training rounds: {f.final_training_rounds} (done: {f.round}), top-k: {f.top_k}, "
        f"seeds per candidate: {f.seeds_per_candidate}",
    ]
    lines += [f"launched: {', '.join(f.launched)}"] if f.launched else []
    lines += [f"pending: {', '.join(p.run_label for p in f.pending)}"] if f.pending else []
    lines += [f"skipped (past the deadline): {', '.join(f.skipped)}"] if f.skipped else []
    lines += [f"report: {path}" for path in f.report_files]
    lines += [f"error: {f.error}"] if f.error else []
    return "\n".join(lines)


def seed_plan(
    runs: list[dict],
    top_k: int = 10,
    seeds_per_candidate: int = 3,
    *,
    metric: str,
    direction: str = "maximize",
) -> list[PlannedRun]:
    """Extra seed runs so each of the top_k candidates (best first) has seeds_per_candidate seed runs.

    `runs` are training rows as `tracking.run_table` gives them (tags OVERRIDES and SEED, the metric).
    A candidate is a distinct configuration among the finished runs (seeds aggregated); runs of it still
    RUNNING count as seeds to come. New seeds are 1, 2, ... skipping every seed the configuration used.
    """
    by_config: dict[tuple[str, ...], list[dict]] = {}
    for row in runs:
        by_config.setdefault(ranking.config_key(row), []).append(row)
    plan = []
    for entry in ranking.rank(runs, metric, direction, top_k):
        rows = by_config[ranking.config_key(next(r for r in runs if r["run_id"] == entry.run_id))]
        have = sum(r["status"] == "RUNNING" for r in rows) + entry.n
        used = {_seed(r) for r in rows}
        seeds = _new_seeds(used, seeds_per_candidate - have)
        estimate = _estimate(rows)
        base = _SEED_SUFFIX.sub("", entry.run_label)
        for seed in seeds:
            suffix = f"-seed{seed}"
            plan.append(
                PlannedRun(
                    run_label=base[: MAX_LABEL - len(suffix)] + suffix,
                    overrides=[*entry.overrides, f"trainer.seed={seed}"],
                    seed=seed,
                    candidate=entry.run_label,
                    estimate_s=estimate,
                )
            )
    return plan


def fits(planned: PlannedRun, now: datetime, deadline: datetime) -> bool:
    """Whether the run is expected to end before the deadline (an unknown duration is given the chance)."""
    return now + timedelta(seconds=planned.estimate_s or 0) <= deadline


def _seed(row: dict) -> int | None:
    value = row["tags"].get(tracking.SEED, "")
    return int(value) if value.lstrip("-").isdigit() else None


def _new_seeds(used: set[int | None], count: int) -> list[int]:
    seeds, candidate = [], 1
    while len(seeds) < count:
        if candidate not in used:
            seeds.append(candidate)
        candidate += 1
    return seeds


def _estimate(rows: list[dict]) -> float | None:
    spans = [
        (r["end_time"] - r["start_time"]) / 1000
        for r in rows
        if r["status"] == "FINISHED" and r.get("start_time") and r.get("end_time")
    ]
    return max(spans) + LAUNCH_OVERHEAD_S if spans else None
