"""Score trainings' logged best checkpoints on held-out test data and log `test_<metric>` on each:
`python -m trainers.evaluate RUN_ID [RUN_ID ...] [--data PATH]` (the store: MLFLOW_TRACKING_URI)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import ValidationError
from torch.utils.data import DataLoader

from agentexp import tracking
from trainers import recipe
from trainers.config import TrainConfig, UserError
from trainers.data import FileImages, load_test, test_source
from trainers.model import epoch_metrics
from trainers.train import CLASSES, SUMMARY_PREFIX

CHECKPOINT = "checkpoints/best.ckpt"
RESOLVED = "config/resolved.yaml"


def score(uri: str, run_id: str, data: Path | None) -> tuple[str, float]:
    """(test metric name, value) of one training, logged on it; a problem the user can fix is a UserError."""
    recorded = _text(uri, run_id, RESOLVED)
    if recorded is None:
        raise UserError(f"run {run_id} has no recorded config ({RESOLVED}): is it a training in this store?")
    try:
        cfg = TrainConfig.model_validate(yaml.safe_load(recorded))
    except ValidationError as err:
        raise UserError(
            f"run {run_id}'s recorded config no longer validates ({err.error_count()} errors)"
        ) from None
    path = data or test_source(cfg)
    if path is None:
        raise UserError(
            f"run {run_id} has no test data configured (a test/ folder beside the class folders for "
            "data=imagefolder, data.test_csv_path for data=csv); give --data PATH"
        )
    classes = json.loads(_text(uri, run_id, CLASSES) or '{"classes": []}')["classes"]
    if not classes:
        raise UserError(f"run {run_id} has no logged checkpoint with its classes ({CHECKPOINT}, {CLASSES})")
    paths, labels, found = load_test(cfg, path.expanduser(), classes)
    net = _network(uri, run_id, cfg, len(classes))
    probs = _predict(net, cfg, FileImages(paths, labels, recipe.val_transform(cfg)))
    value = epoch_metrics(probs, torch.tensor(labels), len(classes))[cfg.metric.key]
    client = MlflowClient(uri)
    client.log_metric(run_id, cfg.metric.test_key, value)
    client.set_tag(run_id, tracking.TEST_FINGERPRINT, found)
    return cfg.metric.test_key, value


def _text(uri: str, run_id: str, path: str) -> str | None:
    return tracking.read_text_artifact(uri, run_id, path)


def _network(uri: str, run_id: str, cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    """The run's model with its best checkpoint's weights (the recorded architecture, nothing downloaded)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = MlflowClient(uri).download_artifacts(run_id, CHECKPOINT, tmp)
        except (MlflowException, OSError):
            raise UserError(f"run {run_id} has no logged checkpoint ({CHECKPOINT})") from None
        state = torch.load(local, map_location="cpu", weights_only=True)["state_dict"]
    net = recipe.build_model(
        cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained": False})}), num_classes
    )
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")})
    return net.eval()


@torch.no_grad()
def _predict(net: torch.nn.Module, cfg: TrainConfig, dataset: FileImages) -> torch.Tensor:
    """Class probabilities of every test image (with the mirror averaged in when the metric asks for TTA)."""
    device = "cuda" if cfg.trainer.accelerator != "cpu" and torch.cuda.is_available() else "cpu"
    net = net.to(device)
    out = []
    for images, _ in DataLoader(dataset, batch_size=cfg.data.batch_size, num_workers=0):
        images = images.to(device)
        probs = net(images).softmax(1)
        if cfg.metric.tta:
            probs = (probs + net(images.flip(-1)).softmax(1)) / 2
        out.append(probs.float().cpu())
    return torch.cat(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainers.evaluate", description=__doc__)
    parser.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    parser.add_argument("--data", type=Path, help="an image folder, or a CSV in the run's column layout")
    args = parser.parse_args(argv)
    uri = os.environ.get(tracking.ENV_URI)
    if not uri:
        sys.exit(f"Error: {tracking.ENV_URI} is not set: it names the store the runs are in")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # the log's last lines stay readable
    scores, errors = {}, {}
    for run_id in args.run_ids:
        try:
            metric, value = score(uri, run_id, args.data)
            scores[run_id] = {"metric": metric, "value": value}
        except UserError as err:
            errors[run_id] = str(err)
    print(SUMMARY_PREFIX + json.dumps({"scores": scores, "errors": errors}), flush=True)


if __name__ == "__main__":
    main()
