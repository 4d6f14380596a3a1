"""MLflow conventions: where the store is, run kinds and tag names, store preparation."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

KIND = "agentexp.kind"
"""Run kind tag: loop, decision, train or audit."""
CYCLE_TRACE_ID = "agentexp.cycle_trace_id"
PARENT_RUN_ID = "mlflow.parentRunId"
OVERRIDES = "agentexp.overrides"
"""JSON list of the Hydra overrides a training ran with."""

COMMAND = "agentexp.command"
"""The command that reruns a training (overrides included)."""
RUN_DIR = "agentexp.run_dir"
PID = "agentexp.pid"
"""The training process; the reaper ends a RUNNING run whose process is gone."""
SEED = "agentexp.seed"
DATA_FINGERPRINT = "agentexp.data.fingerprint"
SKIPPED_IMAGES = "agentexp.data.skipped_images"
GIT_STATUS = "agentexp.git.status"
"""`ok`, or why no git state was recorded (e.g. an unpacked archive)."""
GIT_COMMIT = "agentexp.git.commit"
GIT_DIRTY = "agentexp.git.dirty"
GIT_DIFF_ARTIFACT = "agentexp.git.diff_artifact"
DEVICE = "agentexp.device"
GPU_NAME = "agentexp.gpu_name"
BEST_EPOCH = "agentexp.best_epoch"
VERSION_PREFIX = "agentexp.version."

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"
ENV_PARENT = "AGENTEXP_PARENT_RUN_ID"
ENV_TRACE = "AGENTEXP_CYCLE_TRACE_ID"


def resolve_uri(configured: str, cwd: Path | None = None) -> str:
    """The store URI: MLFLOW_TRACKING_URI wins; a relative sqlite path becomes absolute once, here."""
    uri = os.environ.get(ENV_URI) or configured
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = (cwd or Path.cwd()) / uri.removeprefix(prefix)
        uri = prefix + str(path.resolve())
    return uri


def resolve_experiment(configured: str) -> str:
    """The experiment name: MLFLOW_EXPERIMENT_NAME wins over the config."""
    return os.environ.get(ENV_EXPERIMENT) or configured


def sqlite_path(uri: str) -> Path | None:
    """The database file behind a sqlite URI, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def ensure_store(uri: str, experiment: str) -> str:
    """Create the store (schema migrations run here, once) and the experiment; return its id.

    Artifacts of a sqlite store live beside the database, never relative to the working dir.
    """
    db = sqlite_path(uri)
    artifact_location = None
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        artifact_location = (db.parent / "artifacts" / experiment).as_uri()
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(experiment, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(experiment).experiment_id


def experiments(uri: str) -> dict[str, str]:
    """Name -> id of the store's experiments that hold runs (the empty Default one is left out)."""
    client = MlflowClient(uri)
    found = client.search_experiments()
    return {e.name: e.experiment_id for e in found if client.search_runs([e.experiment_id], max_results=1)}


def runs_page(experiment_id: str, port: int, host: str = "127.0.0.1") -> str:
    """The MLflow UI page that lists and compares an experiment's training runs."""
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs"


SESSION = "agentexp.session_id"
CYCLE = "agentexp.cycle"
MAX_QUERY = 5000
"""Training runs read for the agents' context (newest first); older ones only matter to reports."""


def trace_id_for(cycle: int) -> str:
    """A cycle's trace id; the cycle number stays readable in it."""
    return f"c{cycle:05d}-{uuid.uuid4().hex[:8]}"


def cycle_of(trace_id: str | None) -> int | None:
    """The cycle number inside a trace id made by trace_id_for, else None."""
    if trace_id and trace_id.startswith("c") and trace_id[1:6].isdigit():
        return int(trace_id[1:6])
    return None


class Tracker:
    """The loop's MLflow record: one loop run per session, one decision run per cycle, training queries."""

    def __init__(self, uri: str, experiment: str):
        self.uri, self.experiment = uri, experiment
        self.client = MlflowClient(uri)
        self.experiment_id = ensure_store(uri, experiment)
        self._train_runs: list[dict] | None = None

    def start_loop(self, session_id: str, params: dict[str, str], resume_run_id: str | None) -> str:
        """Resume this session's loop run after a restart, or open a new one."""
        tags = {KIND: "loop", SESSION: session_id, PID: str(os.getpid())}
        if resume_run_id is not None:
            self.client.update_run(resume_run_id, status="RUNNING")
            for key, value in tags.items():
                self.client.set_tag(resume_run_id, key, value)
            return resume_run_id
        run = self.client.create_run(self.experiment_id, run_name=f"loop-{session_id[:8]}", tags=tags)
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def start_decision(self, loop_run_id: str, cycle: int, trace_id: str) -> str:
        tags = {
            KIND: "decision",
            PARENT_RUN_ID: loop_run_id,
            CYCLE_TRACE_ID: trace_id,
            CYCLE: str(cycle),
            PID: str(os.getpid()),
        }
        run = self.client.create_run(self.experiment_id, run_name=f"cycle-{cycle:04d}", tags=tags)
        return run.info.run_id

    def finish_decision(
        self,
        run_id: str,
        params: dict[str, str],
        metrics: dict[str, float],
        tags: dict[str, str],
        texts: dict[str, str],
    ) -> None:
        """Log a decision run's record in one batch, its texts as artifacts, and end it FINISHED."""
        self._log_params(run_id, params)
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, v[:MAX_TAG]) for k, v in tags.items()],
        )
        for path, text in texts.items():
            self.client.log_text(run_id, text, path)
        self.client.set_terminated(run_id, "FINISHED")

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        self.client.log_batch(run_id, params=[Param(k, str(v)[:MAX_PARAM]) for k, v in params.items()])

    def training_runs(self) -> list[dict]:
        """Every training run as the agents see it (newest last); cached until invalidate()."""
        if self._train_runs is None:
            runs = self.client.search_runs(
                [self.experiment_id],
                f"tags.`{KIND}` = 'train'",
                max_results=MAX_QUERY,
                order_by=["attributes.start_time DESC"],
            )
            self._train_runs = [_as_training(run) for run in reversed(runs)]
        return self._train_runs

    def invalidate(self) -> None:
        """Forget the cached training runs: call when a training ends."""
        self._train_runs = None

    def reap(self, alive: Callable[[int], bool]) -> list[str]:
        """End as KILLED every RUNNING run whose recorded process is gone (a hard kill leaves them so)."""
        reaped = []
        for run in self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'"):
            pid = run.data.tags.get(PID)
            if pid and pid.isdigit() and not alive(int(pid)):
                self.client.set_terminated(run.info.run_id, "KILLED")
                reaped.append(run.info.run_id)
        if reaped:
            self.invalidate()
        return reaped


MAX_PARAM = 6000
MAX_TAG = 8000


def _as_training(run) -> dict:
    summary = [v for k, v in run.data.metrics.items() if k.startswith("best_")]
    return {
        "run_id": run.info.run_id,
        "run_label": run.info.run_name,
        "status": run.info.status,
        "overrides": json.loads(run.data.tags.get(OVERRIDES, "[]")),
        "metric": summary[0] if summary else None,
        "cycle": cycle_of(run.data.tags.get(CYCLE_TRACE_ID)),
    }


def leaderboard(runs: list[dict], k: int, direction: str = "maximize") -> list[dict]:
    """The top k finished training runs by their summary metric, in the metric's direction."""
    done = [r for r in runs if r["status"] == "FINISHED" and r["metric"] is not None]
    return sorted(done, key=lambda r: r["metric"], reverse=direction == "maximize")[:k]
