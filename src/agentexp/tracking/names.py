"""MLflow conventions of agentexp: tag and environment names, run kinds, where the store is, trace ids."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

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
DATA_SPLIT = "agentexp.data.split"
CODE_COMMIT = "agentexp.code.commit"
"""The code a training ran, when not the checkout's own: a code experiment's commit or the incumbent's."""
CODE_BRANCH = "agentexp.code.branch"
CODE_OUTCOME = "agentexp.code.outcome"
"""kept | discarded | failed on a code experiment's training; rejected on a decision with a refused patch."""
ENV_CODE_COMMIT = "AGENTEXP_CODE_COMMIT"
ENV_CODE_BRANCH = "AGENTEXP_CODE_BRANCH"
"""A fingerprint of which samples are in the validation split: only runs on the same one compare."""
TEST_DATA = "agentexp.data.test"
"""Set on a training whose config names held-out test data: finish-up scores it there."""
TEST_FINGERPRINT = "agentexp.test.fingerprint"
"""On a training scored by `evaluate`: a fingerprint of the data its test_<metric> was measured on."""
TEST_FOLDER = "test"
"""Held-out test data's name: an image folder's root/test/, and what no agent's path override may name."""
TEST_PREFIX = "test_"
"""Held-out test metrics (`test_acc`): logged only by `evaluate`, never shown to an agent."""
PRUNED = "agentexp.pruned"
"""On a training the pruner stopped early (its run ended KILLED)."""
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


SESSION = "agentexp.session_id"
CYCLE = "agentexp.cycle"
HOST = "agentexp.host"
"""The machine a run's process runs on: the reaper only touches runs of its own host."""
SLURM_JOB = "agentexp.slurm.job_id"
"""The SLURM job a training ran in: the reaper ends its run once SLURM says the job ended."""
AUDIT_OF = "agentexp.audit.of"
"""On an audit run: the id of the training it reproduced."""
AUDIT_MATCH = "agentexp.audit.match"
"""On an audit run: `true` when metric, data fingerprint and config matched the original."""
ENV_RUN_KIND = "AGENTEXP_RUN_KIND"
"""The trainer tags its run with this kind (`train` when unset; `agentexp reproduce` sets `audit`)."""


MAX_PARAM = 6000
MAX_TAG = 8000


def held_out(metric: str) -> bool:
    """Whether a metric is a held-out test number, which no agent context, prompt or evidence may hold."""
    return metric.startswith(TEST_PREFIX)


def test_metric(summary: str) -> str:
    """The held-out metric `evaluate` logs for a summary metric: best_val_acc -> test_acc."""
    return TEST_PREFIX + summary.removeprefix("best_").removeprefix("val_")


def without_held_out(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics an agent may see: every held-out test number dropped."""
    return {k: v for k, v in metrics.items() if not held_out(k)}


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


def runs_page(experiment_id: str, port: int, host: str = "127.0.0.1") -> str:
    """The MLflow UI page that lists and compares an experiment's training runs."""
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs"


def trace_id_for(cycle: int) -> str:
    """A cycle's trace id; the cycle number stays readable in it."""
    return f"c{cycle:05d}-{uuid.uuid4().hex[:8]}"


def cycle_of(trace_id: str | None) -> int | None:
    """The cycle number inside a trace id made by trace_id_for, else None."""
    if trace_id and trace_id.startswith("c") and trace_id[1:6].isdigit():
        return int(trace_id[1:6])
    return None
