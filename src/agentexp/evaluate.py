"""Held-out test scoring of chosen runs, by `trainers.evaluate` in its own process; its numbers are logged on
the runs as test_<metric> and never reach an agent."""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

from agentexp import ranking, tracking
from agentexp.launchers.base import LaunchSpec, module_argv, run_to_end, training_env
from agentexp.launchers.local import LocalLauncher

log = logging.getLogger(__name__)

MODULE = "trainers.evaluate"
CHECKPOINT = "checkpoints/best.ckpt"
"""Where the trainer logs its best checkpoint (whenever test data is configured)."""


class EvaluateError(Exception):
    """A run that cannot be scored (unknown, no checkpoint, no test data), said in one sentence."""


class TestScore(BaseModel):
    metric: str
    """The held-out metric logged on the run, e.g. test_acc."""
    value: float


class Scores(BaseModel):
    """What one evaluator process scored, and why it could not score the rest."""

    scores: dict[str, TestScore] = {}
    """Run id -> its logged test score."""
    errors: dict[str, str] = {}
    """Run id -> why it was not scored."""


def score(
    uri: str, experiment: str, run_ids: list[str], data: Path | None = None, python: str = sys.executable
) -> Scores:
    """Score the runs in one evaluator process (each on its configured test data, or on `data`)."""
    tmp = Path(tempfile.mkdtemp(prefix="agentexp-evaluate-")).resolve()
    args = [*run_ids, *(["--data", str(data.resolve())] if data is not None else [])]
    spec = LaunchSpec(
        run_label="evaluate",
        argv=module_argv(python, MODULE, args),
        env=training_env(uri, experiment),
        log_path=tmp / "evaluate.log",
        run_dir=tmp,
    )
    try:
        outcome = run_to_end(LocalLauncher(stop_grace_s=30.0), spec)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if outcome.status != "finished" or outcome.summary is None:
        last = (outcome.error_tail.strip().splitlines() or ["no output"])[-1]
        raise EvaluateError(f"the evaluation failed (exit {outcome.returncode}): {last}")
    return Scores.model_validate(outcome.summary)


def evaluate(uri: str, run_id: str, data: Path | None = None, python: str = sys.executable) -> TestScore:
    """Score one training on its test data (or `data`: an image folder, or a CSV in the run's columns)."""
    run = tracking.get_run(uri, run_id)
    if run is None:
        raise EvaluateError(f"no run {run_id} in {uri}")
    kind = run["tags"].get(tracking.KIND, "untagged")
    if kind != "train":
        raise EvaluateError(
            f"run {run_id} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} run, not a training"
        )
    if CHECKPOINT not in tracking.artifact_paths(uri, run_id, "checkpoints"):
        raise EvaluateError(
            f"run {run_id} has no logged checkpoint: it trained without test data configured "
            "and without tracking.log_checkpoint=true"
        )
    if data is not None and not data.exists():
        raise EvaluateError(f"--data {data} does not exist")
    found = score(uri, run["experiment"], [run_id], data, python)
    if run_id in found.errors:
        raise EvaluateError(found.errors[run_id])
    return found.scores[run_id]


def score_top(src: tracking.Source, k: int, python: str = sys.executable) -> Scores:
    """Finish-up: score every seed run of the top-k configurations that trained with test data configured
    (nothing when none did). A failed evaluation is logged, never raised: the report is written anyway."""
    experiment_id = tracking.find_experiment(src.uri, src.experiment)
    if experiment_id is None:
        return Scores()
    tags = (*ranking.KEY_TAGS, tracking.TEST_DATA)
    rows = tracking.run_table(src.uri, experiment_id, "train", (src.metric,), (), tags)
    ordered, _ = ranking.order(rows, src.metric, src.direction)
    run_ids = [r["run_id"] for runs in ordered[:k] for r in runs if r["tags"].get(tracking.TEST_DATA)]
    if not run_ids:
        return Scores()
    try:
        found = score(src.uri, src.experiment, run_ids, python=python)
    except EvaluateError as err:
        log.warning("finish-up: no held-out test scores: %s", err)
        return Scores()
    for run_id, why in found.errors.items():
        log.warning("finish-up: run %s not scored on the test data: %s", run_id, why)
    log.info("finish-up: %d of %d top runs scored on the held-out test data", len(found.scores), len(run_ids))
    return found
