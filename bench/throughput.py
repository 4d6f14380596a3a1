"""Trainer vs a hand-written PyTorch loop: steady-state images/s ratio, and the fixed start-up cost of a run.

Both loops train the same model on the same data with the same batch size, optimizer, schedule and number
of steps, in this one process; the first epoch of each is warm-up and not counted. Start-up: fresh processes
time the imports of the libraries a run needs, and a one-step training's time from process start to its first
training step; the rest is what agentexp's own code costs (to see it: `python -X importtime -m trainers.train
debug=fast`, or cProfile of the run up to the first step).
Usage: python bench/throughput.py [--model resnet18] [--epochs 3] [--steps 15] [--startup-runs 3]
                                  [--startup-only]
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
from trainers.train import train


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


IMPORTS = "torch, lightning, mlflow, timm"
"""The libraries every training imports, timed in a fresh process: the part of start-up that is theirs."""
STORE_IMPORT = "mlflow.store.tracking.sqlalchemy_store"
"""MLflow's SQL store (SQLAlchemy, alembic): `import mlflow` leaves it out, the first client on a sqlite
URI loads it."""
CPU = "(lambda r: r.ru_utime + r.ru_stime)(__import__('resource').getrusage(0))"
IMPORT_TIMER = f"""
import json, time
wall, cpu = time.perf_counter(), {CPU}
import {IMPORTS}
libs = time.perf_counter() - wall, {CPU} - cpu
import {STORE_IMPORT}
print(json.dumps({{"libs": libs, "store": (time.perf_counter() - wall - libs[0], {CPU} - cpu - libs[1])}}))
"""
PROBE_PREFIX = "startup-probe: "
PROBE = f"""
import json, os, runpy, sys, time
import lightning

class TrainingStarts(lightning.Callback):
    def on_train_start(self, *_):
        since = time.time() - float(os.environ["BENCH_T0"])
        print("{PROBE_PREFIX}" + json.dumps({{"wall": since, "cpu": {CPU}}}), flush=True)

build = lightning.Trainer.__init__
lightning.Trainer.__init__ = lambda self, *a, callbacks=(), **k: build(
    self, *a, callbacks=[*callbacks, TrainingStarts()], **k
)
sys.argv = ["trainers.train", *sys.argv[1:]]
runpy.run_module("trainers.train", run_name="__main__", alter_sys=True)
"""
"""Runs the trainer as `python -m trainers.train` does, and prints when (wall and CPU seconds since the
process started) Lightning is about to fetch the first training batch."""


def startup_seconds(workdir: Path, runs: int) -> dict[str, float]:
    """Medians over `runs` fresh processes: the imports' share, and a one-step training's time to its
    first training step and in all, in wall and CPU seconds (CPU time suffers less from other load)."""
    args = [
        "debug=fast",
        "trainer.epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
    ]
    samples: dict[str, list[float]] = {}
    for run in range(runs):
        timed = json.loads(_python(["-c", IMPORT_TIMER]))
        start = time.time()
        out = _python(["-c", PROBE, *args, f"hydra.run.dir={workdir / f'startup{run}'}"], BENCH_T0=str(start))
        total = time.time() - start
        line = next(x for x in out.splitlines() if x.startswith(PROBE_PREFIX))
        probe = json.loads(line.removeprefix(PROBE_PREFIX))
        for key, value in {
            "libs_wall": timed["libs"][0],
            "libs_cpu": timed["libs"][1],
            "store_wall": timed["store"][0],
            "store_cpu": timed["store"][1],
            "first_step_wall": probe["wall"],
            "first_step_cpu": probe["cpu"],
            "whole_wall": total,
        }.items():
            samples.setdefault(key, []).append(value)
    return {key: statistics.median(values) for key, values in samples.items()}


def _python(args: list[str], **env: str) -> str:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=True, env=os.environ | env
    ).stdout


def print_startup(s: dict[str, float], runs: int) -> None:
    imports_wall, imports_cpu = s["libs_wall"] + s["store_wall"], s["libs_cpu"] + s["store_cpu"]
    print(f"start-up of a one-step training, median of {runs} fresh processes (wall / CPU seconds):")
    print(f"  imports {IMPORTS}   : {s['libs_wall']:6.2f} / {s['libs_cpu']:5.2f}")
    print(f"  + MLflow's SQL store (first client)   : {s['store_wall']:6.2f} / {s['store_cpu']:5.2f}")
    first_wall, first_cpu = s["first_step_wall"], s["first_step_cpu"]
    print(f"  process start -> first training step  : {first_wall:6.2f} / {first_cpu:5.2f}")
    print(
        f"  rest (first step - imports; goal <= 1): {first_wall - imports_wall:6.2f} / "
        f"{first_cpu - imports_cpu:5.2f}   (less the four libraries only: "
        f"{first_wall - s['libs_wall']:.2f} / {first_cpu - s['libs_cpu']:.2f})"
    )
    print(f"  whole one-step process                : {s['whole_wall']:6.2f}")
    print(f"  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15, help="training steps per epoch")
    parser.add_argument("--startup-runs", type=int, default=3, help="fresh processes timed for start-up")
    parser.add_argument("--startup-only", action="store_true", help="time start-up only, not throughput")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.environ[tracking.ENV_URI] = f"sqlite:///{workdir / 'mlflow.db'}"
        tracking.prepare_store(os.environ[tracking.ENV_URI])  # a run finds the store migrated, as in a loop
        if not args.startup_only:
            throughput(args, workdir)
        print_startup(startup_seconds(workdir, args.startup_runs), args.startup_runs)


def throughput(args, workdir: Path) -> None:
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
    print(
        f"model={args.model} batch={cfg.data.batch_size} steps/epoch={args.steps} "
        f"measured epochs={len(ours)} threads={torch.get_num_threads()}"
    )
    print(f"hand-written loop : {statistics.mean(hand):8.1f} images/s")
    print(f"agentexp trainer  : {statistics.mean(ours):8.1f} images/s")
    print(f"ratio trainer/hand: {statistics.mean(ours) / statistics.mean(hand):8.3f}   (goal >= 0.95)")


if __name__ == "__main__":
    main()
