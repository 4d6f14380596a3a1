"""Train one image classifier and track it in MLflow: `python -m trainers.train [Hydra overrides]`."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import lightning as L
import mlflow
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig

from agentexp import gpu, provenance, tracking
from trainers.config import TrainConfig, UserError, from_hydra
from trainers.data import ImageDataModule, Split, load_split, test_source
from trainers.evaluation import confusion_figure, per_class_report
from trainers.model import Classifier

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SUMMARY_PREFIX = "agentexp-summary: "
LIBRARIES = ("torch", "torchvision", "timm", "lightning", "mlflow", "agentexp")
CLASSES = "checkpoints/classes.json"
"""The class names in label order, logged beside the checkpoint."""
RUN_KINDS = ("train", "audit", "preflight")
"""Kinds a training run may be tagged with; leaderboards only read `train`."""


class TrainingInterrupted(Exception):
    """SIGTERM, SIGINT or the run's timeout: the run ends KILLED."""

    def __init__(self, reason: str, exit_code: int):
        super().__init__(reason)
        self.exit_code = exit_code


class RunOwnedLogger(MLFlowLogger):
    """Lightning's MLflow logger on a run this program started; the program, not Lightning, ends it."""

    def finalize(self, status: str = "success") -> None:
        pass


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    try:
        config = from_hydra(cfg)
        summary = train(config, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
    except UserError as err:
        sys.exit(f"Error: {err}")
    except TrainingInterrupted as err:
        print(f"Stopped: {err}; the run ended KILLED", file=sys.stderr)
        sys.exit(err.exit_code)
    return summary["best"]


def train(cfg: TrainConfig, run_dir: Path, overrides: list[str]) -> dict:
    """seed -> data -> model -> MLflow run -> trainer -> fit -> summary. Returns the summary."""
    started = time.perf_counter()
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    split = load_split(cfg)
    datamodule = ImageDataModule(cfg, split)
    module = Classifier(cfg, datamodule.num_classes, datamodule.class_weights())
    uri = tracking.resolve_uri(cfg.tracking.uri)
    experiment_id = tracking.ensure_store(uri, tracking.resolve_experiment(cfg.tracking.experiment))
    mlflow.set_tracking_uri(uri)
    git = provenance.git_state(PROJECT_ROOT)
    with _interrupts_raise(cfg.trainer.timeout_s):
        run = mlflow.start_run(
            experiment_id=experiment_id,
            run_name=cfg.run_label or f"{cfg.model.name}-{uuid.uuid4().hex[:6]}",  # uuid4 ignores the seed
            parent_run_id=os.environ.get(tracking.ENV_PARENT) or None,
            tags=_run_tags(cfg, split, overrides, run_dir, git),
            log_system_metrics=True,
        )
        try:
            _log_inputs(cfg, overrides, git)
            trainer = _build_trainer(cfg, run_dir, uri, run.info.run_id)
            mlflow.set_tag(tracking.DEVICE, str(trainer.strategy.root_device))
            trainer.fit(module, datamodule=datamodule)
            summary = _finish(cfg, module, split, trainer, run.info.run_id, started)
        except BaseException as err:
            if (stop := _interruption(err)) is None:
                mlflow.end_run("FAILED")
                raise
            mlflow.end_run("KILLED")  # a signal that hit inside a library may come back wrapped in its error
            raise stop from None
        mlflow.end_run("FINISHED")
    print(SUMMARY_PREFIX + json.dumps(summary), flush=True)
    return summary


@contextmanager
def _interrupts_raise(timeout_s: float) -> Iterator[None]:
    """Turn SIGTERM, SIGINT and the timeout into TrainingInterrupted, so the run can end KILLED."""

    def handler(signum: int, _frame) -> None:
        signal.signal(signum, signal.SIG_DFL)  # a second signal stops the process outright
        if signum == signal.SIGALRM:
            raise TrainingInterrupted(f"timeout after {timeout_s:g}s (trainer.timeout_s)", 124)
        raise TrainingInterrupted(f"received {signal.Signals(signum).name}", 128 + signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)}
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for signum, old in previous.items():
            signal.signal(signum, old)


def _interruption(err: BaseException | None) -> TrainingInterrupted | None:
    """The TrainingInterrupted an error is, or was raised from (e.g. MLflow's "received SIGTERM")."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, TrainingInterrupted):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _run_tags(
    cfg: TrainConfig, split: Split, overrides: list[str], run_dir: Path, git: provenance.GitState
) -> dict[str, str]:
    names = gpu.gpu_names()
    tags = {
        tracking.KIND: _run_kind(),
        tracking.OVERRIDES: json.dumps(overrides),
        tracking.COMMAND: " ".join(["python", "-m", "trainers.train", *overrides]),
        tracking.RUN_DIR: str(run_dir.resolve()),
        tracking.PID: str(os.getpid()),
        tracking.HOST: socket.gethostname(),
        tracking.SEED: str(cfg.trainer.seed),
        tracking.DATA_FINGERPRINT: split.fingerprint,
        tracking.DATA_SPLIT: split.val_fingerprint,
        tracking.SKIPPED_IMAGES: str(split.skipped_images),
        tracking.GIT_STATUS: "ok" if git.available else git.reason,
        tracking.GPU_NAME: names[0] if names else "none",
        **{
            f"{tracking.VERSION_PREFIX}{name}": v
            for name, v in provenance.package_versions(LIBRARIES).items()
        },
    }
    if git.available:
        tags |= {tracking.GIT_COMMIT: git.commit, tracking.GIT_DIRTY: str(git.dirty).lower()}
    if job_id := os.environ.get("SLURM_JOB_ID"):  # under SLURM the job, not a pid, says when it ended
        tags[tracking.SLURM_JOB] = job_id
    if trace_id := os.environ.get(tracking.ENV_TRACE):
        tags[tracking.CYCLE_TRACE_ID] = trace_id
    if commit := os.environ.get(tracking.ENV_CODE_COMMIT):  # a code experiment's, or the incumbent's, code
        tags |= {
            tracking.CODE_COMMIT: commit,
            tracking.CODE_BRANCH: os.environ.get(tracking.ENV_CODE_BRANCH, ""),
        }
    if git.dirty:
        tags[tracking.GIT_DIFF_ARTIFACT] = "provenance/git_diff.patch"
    return tags


def _run_kind() -> str:
    """`train`, unless AGENTEXP_RUN_KIND asks for `audit` (`agentexp reproduce` sets it for its rerun)."""
    kind = os.environ.get(tracking.ENV_RUN_KIND) or "train"
    if kind not in RUN_KINDS:
        raise UserError(f"{tracking.ENV_RUN_KIND}={kind!r} is not one of {', '.join(RUN_KINDS)}")
    return kind


def _log_inputs(cfg: TrainConfig, overrides: list[str], git: provenance.GitState) -> None:
    resolved = cfg.model_dump(mode="json")
    mlflow.log_params(_flatten(resolved))
    mlflow.log_dict(resolved, "config/resolved.yaml")
    mlflow.log_text("\n".join(overrides) + "\n", "config/overrides.txt")
    if git.dirty:
        mlflow.log_text(git.diff + "\n", "provenance/git_diff.patch")


def _flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def _build_trainer(cfg: TrainConfig, run_dir: Path, uri: str, run_id: str) -> L.Trainer:
    t = cfg.trainer
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor=cfg.metric.key, mode="max", save_top_k=1
    )
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        precision=t.precision,
        max_epochs=t.epochs,
        deterministic=t.deterministic,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        num_sanity_val_steps=0,
        logger=RunOwnedLogger(tracking_uri=uri, run_id=run_id),
        callbacks=[checkpoint],
        default_root_dir=run_dir,
        enable_model_summary=False,
    )


def _finish(
    cfg: TrainConfig, module: Classifier, split: Split, trainer: L.Trainer, run_id: str, started: float
):
    if module.best is None:
        raise UserError("training produced no validation result (is limit_val_batches 0?)")
    probs, labels = module.best_outputs
    rates = module.images_per_s[1:] or module.images_per_s  # the first epoch includes warm-up
    wall = time.perf_counter() - started
    mlflow.log_metrics(
        {cfg.metric.summary_key: module.best, "wall_time_s": wall, "images_per_s": sum(rates) / len(rates)}
    )
    mlflow.set_tag(tracking.BEST_EPOCH, str(module.best_epoch))
    mlflow.log_dict(per_class_report(probs, labels, split.class_names), "evaluation/per_class_report.json")
    mlflow.log_figure(confusion_figure(probs, labels, split.class_names), "evaluation/confusion_matrix.png")
    best_path = trainer.checkpoint_callback.best_model_path
    test_data = test_source(cfg)
    if (cfg.tracking.log_checkpoint or test_data) and best_path:  # `evaluate` scores the logged one
        mlflow.log_artifact(best_path, "checkpoints")
        mlflow.log_dict({"classes": split.class_names}, CLASSES)
    if test_data:
        mlflow.set_tag(tracking.TEST_DATA, str(test_data))
    return {
        "metric": cfg.metric.key,
        "summary_metric": cfg.metric.summary_key,
        "best": module.best,
        "epoch": module.best_epoch,
        "run_id": run_id,
        "wall_s": round(wall, 3),
        "images_per_s": round(sum(rates) / len(rates), 1),
    }


if __name__ == "__main__":
    main()
