"""Multi-fidelity: a training clearly behind the others at the same epoch is stopped early (Optuna's
MedianPruner rule over the per-epoch validation metric the trainer logs to MLflow, "clearly" meaning by
more than the mission's seed-noise band, `noise.band`).

A pruned training goes through the launcher like any stop: its run ends KILLED, and carries the tag
`agentexp.pruned=true` so the leaderboard (FINISHED runs only) leaves it out and a reader sees why. It
costs the budget only the share of its epochs it ran (`Stop.share`): that is what buys more trials.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from agentexp import noise, ranking, tracking
from agentexp.launchers.base import ActiveRun


class PruneConfig(BaseModel):
    """The `executor.prune:` section of conf/loop.yaml."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Stop a training behind the median of the finished ones at the same epoch."""
    warmup_epochs: int = Field(1, ge=0)
    """Epochs (0-based index) a training always completes before it may be stopped."""
    min_runs: int = Field(3, ge=1)
    """Finished trainings that reached the epoch before their median is trusted."""
    check_every_s: float = Field(5.0, ge=0)
    """Seconds between two looks at the running trainings' metric histories."""


def behind(
    history: Sequence[float],
    others: Sequence[Sequence[float]],
    direction: str,
    warmup_epochs: int = 1,
    min_runs: int = 3,
    margin: float = 0.0,
) -> bool:
    """True when a run should stop: at its latest epoch (past the warm-up), its best value so far is worse
    by more than `margin` than the median of the other runs' values at that epoch, over at least
    `min_runs` of them.

    `history` and each of `others` hold one value per epoch, epoch 0 first (MedianPruner's semantics:
    the trial's best intermediate value against the median of the others' values at the same step)."""
    epoch = len(history) - 1
    if epoch < warmup_epochs:
        return False
    at_epoch = [run[epoch] for run in others if len(run) > epoch]
    if len(at_epoch) < min_runs:
        return False
    median = statistics.median(at_epoch)
    return noise.beats(median, max(history) if direction == "maximize" else min(history), margin, direction)


@dataclass(frozen=True)
class Stop:
    """A running training the pruner stops."""

    run: ActiveRun
    run_id: str
    share: float
    """The share of its planned epochs it ran: what it cost the loop.max_trainings budget."""


class Pruner:
    """Looks at the running trainings' metric histories against the finished ones' (read once each)."""

    def __init__(self, cfg: PruneConfig, tracker: tracking.Tracker, metric_key: str, direction: str) -> None:
        self.cfg, self.tracker, self.key, self.direction = cfg, tracker, metric_key, direction
        self._finished: dict[str, list[float]] = {}
        self._run_ids: dict[str, str] = {}
        self._last = 0.0

    def behind(self, running: list[ActiveRun]) -> list[Stop]:
        """The running trainings to stop (none between two looks)."""
        if not self.cfg.enabled or not running or time.monotonic() - self._last < self.cfg.check_every_s:
            return []
        self._last = time.monotonic()
        rows = self.tracker.training_runs()
        others, band = self._peers(rows), noise.band(ranking.rank(rows, f"best_{self.key}", self.direction))
        stop = []
        for run in running:
            run_id = self._run_id(run)
            history = self._history(run_id) if run_id is not None else []
            if history and behind(
                history, others, self.direction, self.cfg.warmup_epochs, self.cfg.min_runs, band
            ):
                stop.append(Stop(run, run_id, self._share(run_id, len(history))))
        return stop

    def _share(self, run_id: str, epochs_run: int) -> float:
        planned = self.tracker.client.get_run(run_id).data.params.get("trainer.epochs", "")
        return min(1.0, epochs_run / int(planned)) if planned.isdigit() and int(planned) > 0 else 1.0

    def _peers(self, rows: list[dict]) -> list[list[float]]:
        for row in rows:
            if row["status"] == "FINISHED" and row["run_id"] not in self._finished:
                self._finished[row["run_id"]] = self._history(row["run_id"])
        return list(self._finished.values())

    def _history(self, run_id: str) -> list[float]:
        points = self.tracker.client.get_metric_history(run_id, self.key)
        return [p.value for p in sorted(points, key=lambda p: p.step)]

    def _run_id(self, run: ActiveRun) -> str | None:
        key = str(run.run_dir)
        if key not in self._run_ids:
            found = tracking.find_run_by_tag(self.tracker.uri, self.tracker.experiment, tracking.RUN_DIR, key)
            if found is None:  # not started its MLflow run yet
                return None
            self._run_ids[key] = found
        return self._run_ids[key]
