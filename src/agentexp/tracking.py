"""MLflow conventions: where the store is, run kinds and tag names, store preparation."""

from __future__ import annotations

import os
from pathlib import Path

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


def runs_page(experiment_id: str, port: int, host: str = "127.0.0.1") -> str:
    """The MLflow UI page that lists and compares an experiment's training runs."""
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs"
