"""The condensed story: per strategy dimension, what was tried, what helped and what failed, with run ids."""

from __future__ import annotations

import math

from pydantic import BaseModel

from agentexp import tracking
from agentexp.events import Event, RunEnd
from agentexp.ranking import better, config_of, overrides_of

UNATTRIBUTED = "outside the loop"
"""The dimension of training runs no decision launched (sweeps, hand-started runs)."""
NO_RUN = "NO_RUN"
"""Status of a launched training that never opened its MLflow run (it failed before that)."""
PATCH_ARTIFACT = "code/patch.diff"
"""Where a decision run keeps the patch its code experiment was made from."""


class Attempt(BaseModel):
    """One training the record shows, judged against the best result before it."""

    run_id: str
    """The training run; the decision run when the training never opened one."""
    run_label: str
    dimension: str
    cycle: int | None
    status: str
    metric: float | None
    overrides: list[str]
    helped: bool = False
    """It beat the best finished run started before it."""
    gain: float | None = None
    """How far it beat that best (in the better direction)."""
    error: str | None = None
    """Why it failed, from the loop's run_end events when they are available."""

    @property
    def failed(self) -> bool:
        return self.status in ("FAILED", "KILLED", NO_RUN)


class Dimension(BaseModel):
    name: str
    tried: list[Attempt]
    helped: list[Attempt]
    failed: list[Attempt]
    best: float | None
    gain: float
    """Sum of the gains of the attempts that helped."""


def attempts(
    train: list[dict], decisions: list[dict], events: list[Event], metric: str, direction: str
) -> list[Attempt]:
    """Every training in start order, with its decision's dimension, whether it helped, and its error."""
    by_id = {d["run_id"]: d for d in decisions}
    errors = _errors(events)
    found, seen = [], set()
    for row in train:
        parent = by_id.get(row["tags"].get(tracking.PARENT_RUN_ID, ""))
        seen.add(parent["run_id"] if parent else None)
        value = row["metrics"].get(metric)
        attempt = Attempt(
            run_id=row["run_id"],
            run_label=row["run_name"],
            dimension=(parent and parent["params"].get("strategy_dimension")) or UNATTRIBUTED,
            cycle=tracking.cycle_of(row["tags"].get(tracking.CYCLE_TRACE_ID)),
            status=row["status"],
            metric=value if value is not None and math.isfinite(value) else None,
            overrides=config_of(overrides_of(row)),
        )
        if attempt.failed:
            attempt.error = errors.get(row["run_id"]) or errors.get(row["run_name"])
        found.append(attempt)
    for d in decisions:  # launched, yet no training run came of it: it failed before MLflow saw it
        label = d["params"].get("run_label")
        if label and d["params"].get("action") == "train" and d["run_id"] not in seen:
            found.append(_no_run(d, label, errors.get(label)))
    _judge(found, direction)
    return found


def _no_run(decision: dict, label: str, error: str | None) -> Attempt:
    return Attempt(
        run_id=decision["run_id"],
        run_label=label,
        dimension=decision["params"].get("strategy_dimension") or UNATTRIBUTED,
        cycle=tracking.cycle_of(decision["tags"].get(tracking.CYCLE_TRACE_ID)),
        status=NO_RUN,
        metric=None,
        overrides=[],
        error=error,
    )


def _judge(found: list[Attempt], direction: str) -> None:
    """Mark what beat the best before it; the first finished run is the baseline and beats nothing."""
    key, best = better(direction), None
    for attempt in found:
        if attempt.status != "FINISHED" or attempt.metric is None:
            continue
        if best is not None and key(attempt.metric) < key(best):
            attempt.helped, attempt.gain = True, abs(attempt.metric - best)
        if best is None or key(attempt.metric) < key(best):
            best = attempt.metric


def _errors(events: list[Event]) -> dict[str, str]:
    """run id and run label -> the last line that names the error of a failed or killed training."""
    out: dict[str, str] = {}
    for event in events:
        if not isinstance(event, RunEnd) or event.run.status not in ("failed", "killed"):
            continue
        run = event.run
        line = error_line(run.error_tail) or f"{run.status} (exit code {run.returncode})"
        for key in (run.mlflow_run_id, run.run_label):
            if key:
                out[key] = line
    return out


def error_line(tail: str) -> str:
    """The line of a log tail that says what went wrong (the last one naming an error, else the last)."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    named = [line for line in lines if "error" in line.lower() or "stopped:" in line.lower()]
    return (named or lines or [""])[-1][:300]


def dimensions(found: list[Attempt], direction: str) -> list[Dimension]:
    """Per dimension, most gain first: its attempts, what helped, what failed, its best value."""
    names = sorted({a.dimension for a in found})
    out = []
    for name in names:
        tried = [a for a in found if a.dimension == name]
        values = [a.metric for a in tried if a.status == "FINISHED" and a.metric is not None]
        out.append(
            Dimension(
                name=name,
                tried=tried,
                helped=[a for a in tried if a.helped],
                failed=[a for a in tried if a.failed],
                best=min(values, key=better(direction)) if values else None,
                gain=sum(a.gain or 0.0 for a in tried),
            )
        )
    return sorted(out, key=lambda d: (-d.gain, d.name))


class CodeChange(BaseModel):
    """A kept code experiment: its commit, the training that won, its measured gain and its diff."""

    commit: str
    branch: str
    run_id: str
    """Its best training run."""
    run_label: str
    metric: float
    gain: float | None
    """How far it beat the best finished run of other code started before it (None: nothing to beat)."""
    decision_run_id: str | None
    """The decision run that holds its patch."""
    diff: str = ""


def kept_code(train: list[dict], metric: str, direction: str) -> list[CodeChange]:
    """The code experiments the loop kept (a training tagged agentexp.code.outcome=kept), in start order.

    `train` is in start order; an experiment's runs are its training and its confirmation run, if any."""
    key, out = better(direction), []
    kept = [r["tags"][tracking.CODE_COMMIT] for r in train if r["tags"].get(tracking.CODE_OUTCOME) == "kept"]
    for commit in dict.fromkeys(kept):
        mine = [r for r in train if r["tags"].get(tracking.CODE_COMMIT) == commit]
        done = [r for r in mine if _value(r, metric) is not None]
        if not done:
            continue
        best = min(done, key=lambda r: key(_value(r, metric)))
        first = train.index(mine[0])
        before = [_value(r, metric) for r in train[:first] if r["tags"].get(tracking.CODE_COMMIT) != commit]
        before = [v for v in before if v is not None]
        rival = min(before, key=key) if before else None
        out.append(
            CodeChange(
                commit=commit,
                branch=mine[0]["tags"].get(tracking.CODE_BRANCH, ""),
                run_id=best["run_id"],
                run_label=best["run_name"],
                metric=_value(best, metric),
                gain=None if rival is None else abs(_value(best, metric) - rival),
                decision_run_id=mine[0]["tags"].get(tracking.PARENT_RUN_ID),
            )
        )
    return out


def _value(row: dict, metric: str) -> float | None:
    value = row["metrics"].get(metric)
    return value if row["status"] == "FINISHED" and value is not None and math.isfinite(value) else None
