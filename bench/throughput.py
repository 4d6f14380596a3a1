"""Trainer vs a hand-written PyTorch loop: steady-state images/s ratio, and the fixed start-up cost of a run.

Both loops train the same model on the same data with the same batch size, optimizer, schedule and number
of steps, in this one process; the first epoch of each is warm-up and not counted.
Usage: python bench/throughput.py [--model resnet18] [--epochs 3] [--steps 15]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from agentexp import tracking
from trainers.config import CONF_DIR, from_hydra
from trainers.data import ImageDataModule, load_split
from trainers.recipe import build_model
from trainers.train import SUMMARY_PREFIX, train


def hand_loop(cfg, epochs: int, steps: int) -> list[float]:
    """The minimal PyTorch equivalent of one training: forward, loss, backward, step, schedule."""
    torch.manual_seed(cfg.trainer.seed)
    data = ImageDataModule(cfg, load_split(cfg))
    model = build_model(cfg, data.num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    total = epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    loss_fn = torch.nn.CrossEntropyLoss()
    rates = []
    for _ in range(epochs):
        model.train()
        seen, start = 0, time.perf_counter()
        for step, (images, labels) in enumerate(data.train_dataloader()):
            if step == steps:
                break
            loss = loss_fn(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(labels)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def trainer_loop(cfg, overrides: list[str], workdir: Path) -> list[float]:
    summary = train(cfg, workdir / "run", overrides)
    history = MlflowClient(tracking.resolve_uri(cfg.tracking.uri)).get_metric_history(
        summary["run_id"], "train_images_per_s"
    )
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def startup_seconds(workdir: Path) -> tuple[float, float]:
    """Wall time of a whole one-step training process, and the part of it spent before training starts."""
    args = [
        "debug=fast",
        "trainer.epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        f"hydra.run.dir={workdir / 'startup'}",
    ]
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "trainers.train", *args],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
    ).stdout
    wall = time.perf_counter() - start
    summary = json.loads(next(x for x in out.splitlines() if x.startswith(SUMMARY_PREFIX)).split(": ", 1)[1])
    return wall, wall - summary["wall_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15, help="training steps per epoch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.environ[tracking.ENV_URI] = f"sqlite:///{workdir / 'mlflow.db'}"
        overrides = [
            f"model={args.model}",
            "aug=none",
            "optim.schedule=cosine",
            f"trainer.epochs={args.epochs}",
            f"trainer.limit_train_batches={args.steps}",
            "trainer.limit_val_batches=1",
            "trainer.deterministic=false",
        ]
        with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
            cfg = from_hydra(compose("train", overrides=overrides))
        hand = hand_loop(cfg, args.epochs, args.steps)[1:]
        ours = trainer_loop(cfg, overrides, workdir)[1:]
        wall, before_training = startup_seconds(workdir)
    batch = cfg.data.batch_size
    print(
        f"model={args.model} batch={batch} steps/epoch={args.steps} measured epochs={len(ours)} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"hand-written loop : {statistics.mean(hand):8.1f} images/s")
    print(f"agentexp trainer  : {statistics.mean(ours):8.1f} images/s")
    print(f"ratio trainer/hand: {statistics.mean(ours) / statistics.mean(hand):8.3f}   (goal >= 0.95)")
    print(
        f"one-step run, whole process: {wall:6.2f} s; before training starts (imports, Hydra, MLflow, data): "
        f"{before_training:6.2f} s"
    )


if __name__ == "__main__":
    main()
