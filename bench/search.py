"""Search benchmark (not a test): at an equal budget of N trainings, the offline planner loop against plain
Optuna TPE and random search driving the same trainer over the same space, and against the default config.

The task is generated here, deterministically: 3 classes of small noisy texture images, imbalanced
(60/28/12 %), 4 images per patient, patient-level labels with 10 % image label noise and a per-patient
brightness and colour shift. Train and validation share patients' pool (the trainer's fixed group split,
`data.split_seed=0`); the test split holds new patients and is never shown to any search. Each method's
best-by-validation configuration (mean over its seed runs, `ranking.rank`) is scored on the test split
from its runs' logged best checkpoints by trainers.evaluate (what `agentexp evaluate` runs).

    nice .venv/bin/python bench/search.py --seeds 3 --budget 6 --out a.json
    nice .venv/bin/python bench/search.py --first-seed 3 --seeds 2 --out b.json   # in parallel, other seeds
    .venv/bin/python bench/search.py --table a.json b.json                        # one table of both

The budget is N trainings for every method; a training the planner's loop pruned counts as the share of
its epochs it ran (loop.max_trainings), so the table also gives the epochs each method trained in all.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from mlflow.tracking import MlflowClient
from PIL import Image

import agentexp.config
from agentexp import ranking, tracking
from agentexp.cli.session import build_loop
from agentexp.config import compose_loop, with_mission_space
from agentexp.llm.planner.space import SearchSpace
from agentexp.mission import load_mission
from trainers import evaluate

REPO = Path(__file__).resolve().parents[1]
MISSION = "search_bench"
METRIC = "best_val_auroc"
SIZE = 24  # stored image size in pixels
CLASSES = ("common", "rarer", "rare")
PRIORS = (0.60, 0.28, 0.12)
IMAGES_PER_PATIENT = 4
LABEL_NOISE = 0.10
MISSION_SPACE = {  # what depends on this data: image and batch size
    "data.image_size": {"choices": [32, 48], "default": 32},  # convnext_atto needs 32 px at least
    "data.batch_size": {"choices": [16, 32, 64], "default": 32},
}


def make_task(root: Path, patients: int, test_patients: int) -> tuple[Path, Path]:
    """The image CSVs (train+val pool, test of new patients) under root, the same for every call."""
    rng = np.random.default_rng(20261203)
    (root / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    rows: dict[str, list[dict]] = {"pool": [], "test": []}
    for p in range(patients + test_patients):
        split = "pool" if p < patients else "test"
        label = rng.choice(3, p=PRIORS)
        shift = rng.normal(0, 0.15, 3)  # the patient's colour cast
        freq = rng.uniform(2.5, 4.5)
        for i in range(IMAGES_PER_PATIENT):
            shown = label if rng.random() > LABEL_NOISE else rng.choice(3)
            angle = (0.0, np.pi / 2, np.pi / 4)[label] + rng.normal(0, 0.35)
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
            blob = np.exp(-((xx - rng.uniform(0.2, 0.8)) ** 2 + (yy - rng.uniform(0.2, 0.8)) ** 2) / 0.04)
            base = 0.5 + 0.2 * wave * (0.5 + blob) + rng.normal(0, 0.2, (SIZE, SIZE))
            img = np.clip(base[..., None] + shift + rng.normal(0, 0.05, (SIZE, SIZE, 3)), 0, 1)
            name = f"images/p{p:03d}_{i}.png"
            Image.fromarray((img * 255).astype(np.uint8)).save(root / name)
            rows[split].append({"path": name, "label": CLASSES[shown], "patient": f"p{p:03d}"})
    paths = []
    for split, found in rows.items():
        path = root / f"{split}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "label", "patient"])
            writer.writeheader()
            writer.writerows(found)
        paths.append(path)
    return paths[0], paths[1]


def write_mission(missions: Path, pool: Path) -> None:
    """A mission folder (the repository's role contracts and this task's brief) for the loop."""
    folder = missions / MISSION
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("WORKER_MISSION.md", "MENTOR_MISSION.md"):
        (missions / name).write_text((REPO / "missions" / name).read_text())
    front = {
        "metric": "auroc",
        "direction": "maximize",
        "overrides": [
            "data=csv",
            f"data.csv_path={pool}",
            "data.group_column=patient",
            "data.num_workers=0",
            "data.image_size=32",
            "data.batch_size=32",
            "data.mean=[0.5,0.5,0.5]",
            "data.std=[0.25,0.25,0.25]",
            "tracking.log_checkpoint=true",  # the test scores below load it (trainers.evaluate)
        ],
        "space": MISSION_SPACE,
    }
    brief = (
        "# Mission: search bench\n\nClassify noisy textures of 3 imbalanced classes, grouped by patient.\n"
    )
    (folder / "mission.md").write_text(f"---\n{json.dumps(front)}\n---\n{brief}")


def store_uri(work: Path) -> str:
    """The one sqlite store every method of the bench logs to."""
    return f"sqlite:///{work / 'mlflow.db'}"


def loop_overrides(work: Path, name: str, budget: int, epochs: int, seed: int) -> list[str]:
    return [
        "llm=planner",
        f"llm.seed={seed}",
        f"mission={MISSION}",
        "mentor.enabled=false",
        "code.enabled=false",
        f"loop.max_trainings={budget}",
        f"loop.max_cycles={budget * 10}",
        "loop.poll_seconds=0.1",
        f"loop.workspace={work / name / 'ws'}",
        f"loop.train_overrides=['trainer.epochs={epochs}']",
        f"tracking.uri={store_uri(work)}",
        f"tracking.experiment={name}",
        "executor.poll_interval_s=0.5",
        "executor.cpu_threads=1",  # as the other methods' trainings (OMP_NUM_THREADS=1 below)
    ]


def run_planner(work: Path, name: str, budget: int, epochs: int, seed: int) -> None:
    cfg = compose_loop(loop_overrides(work, name, budget, epochs, seed))
    build_loop(cfg).run()


def run_optuna(work: Path, name: str, budget: int, epochs: int, seed: int, sampler: str) -> None:
    """Plain Optuna over the planner's space: each trial one trainer process, its metric read from MLflow."""
    cfg = with_mission_space(compose_loop(loop_overrides(work, name, budget, epochs, seed)), MISSION_SPACE)
    space, mission = SearchSpace(cfg.llm.space), load_mission(MISSION, agentexp.config.MISSIONS_DIR)
    samplers = {
        "random": optuna.samplers.RandomSampler(seed=seed),
        # Optuna's default of 10 start-up trials would make TPE random search at this budget
        "tpe": optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, budget // 2)),
    }
    study = optuna.create_study(direction="maximize", sampler=samplers[sampler])
    for number in range(budget):
        trial = study.ask(space.distributions())
        config = space.snap(trial.params)
        overrides = [*mission.overrides, f"trainer.epochs={epochs}", *space.to_overrides(config)]
        study.tell(trial, train_once(work, name, f"{name}-t{number:02d}", overrides))


def train_once(work: Path, experiment: str, label: str, overrides: list[str]) -> float:
    env = {
        **os.environ,
        tracking.ENV_URI: store_uri(work),
        tracking.ENV_EXPERIMENT: experiment,
    }
    run_dir = work / experiment / "runs" / label
    argv = [
        sys.executable,
        "-m",
        "trainers.train",
        *overrides,
        f"run_label={label}",
        f"hydra.run.dir={run_dir}",
    ]
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return 0.0
    return best_of(work, experiment, label)


def best_of(work: Path, experiment: str, label: str) -> float:
    client = MlflowClient(store_uri(work))
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], f"tags.mlflow.runName = '{label}'")
    return found[0].data.metrics.get(METRIC, 0.0) if found else 0.0


def rows_of(work: Path, experiment: str) -> list[dict]:
    return tracking.Tracker(store_uri(work), experiment).training_runs()


def score(work: Path, experiment: str, test_csv: Path) -> dict:
    """The best-by-validation configuration's validation mean and its seed runs' mean test AUROC, the
    trainings and the epochs trained (pruned runs' included)."""
    rows = rows_of(work, experiment)
    best = ranking.rank(rows, METRIC, "maximize", k=1)[0]
    tests = [evaluate.score(store_uri(work), run_id, test_csv)[1] for run_id in best.seed_run_ids]
    client = MlflowClient(store_uri(work))
    epochs = sum(len(client.get_metric_history(row["run_id"], "val_auroc")) for row in rows)
    return {"val": best.mean, "test": statistics.fmean(tests), "trainings": len(rows), "epochs": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="bench seeds to run")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--budget", type=int, default=6, help="trainings per search")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--patients", type=int, default=140, help="train+validation patients")
    parser.add_argument("--methods", default="planner,default,tpe,random")
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for the results")
    parser.add_argument("--table", type=Path, nargs="+", help="only print the table of these result files")
    args = parser.parse_args()
    if args.table:
        print_table([row for path in args.table for row in json.loads(path.read_text())])
        return
    os.environ["OMP_NUM_THREADS"] = "1"  # trainings inherit it: on a shared CPU more threads only contend
    work = Path(tempfile.mkdtemp(prefix="search-bench-"))
    pool, test_csv = make_task(work / "data", args.patients, args.patients // 3)
    write_mission(work / "missions", pool)
    agentexp.config.MISSIONS_DIR = work / "missions"  # build_loop reads it at call time
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: list[dict] = []
    started = time.perf_counter()
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for method in args.methods.split(","):
            name = f"{method}-s{seed}"
            t0 = time.perf_counter()
            if method == "default":
                run_default(work, name, args.epochs, seed)
            elif method == "planner":
                run_planner(work, name, args.budget, args.epochs, seed)
            else:
                run_optuna(work, name, args.budget, args.epochs, seed, method)
            row = {"method": method, "seed": seed, "budget": args.budget, **score(work, name, test_csv)}
            row["seconds"] = round(time.perf_counter() - t0)
            results.append(row)
            print(
                f"{name}: val {row['val']:.4f} test {row['test']:.4f} ({row['trainings']} trainings, "
                f"{row['epochs']} epochs, {row['seconds']} s)",
                flush=True,
            )
            if args.out:
                args.out.write_text(json.dumps(results, indent=1))
    print(f"\nbudget {args.budget} trainings of {args.epochs} epochs, {time.perf_counter() - started:.0f} s")
    print_table(results)


def print_table(results: list[dict]) -> None:
    """Mean ± std over seeds per method, and each seed's figures."""
    print(
        "| method | seeds | validation macro AUROC | test macro AUROC (new patients) | trainings | epochs |"
    )
    print("|---|---|---|---|---|---|")
    by_method: dict[str, list[dict]] = {}
    for row in sorted(results, key=lambda r: r["seed"]):
        by_method.setdefault(row["method"], []).append(row)
    for method, rows in by_method.items():
        vals, tests = [r["val"] for r in rows], [r["test"] for r in rows]
        trainings, epochs = (statistics.fmean(r[k] for r in rows) for k in ("trainings", "epochs"))
        print(f"| {method} | {len(rows)} | {_ms(vals)} | {_ms(tests)} | {trainings:.1f} | {epochs:.1f} |")
    print()
    for method, rows in by_method.items():
        print(f"{method}: " + "; ".join(f"s{r['seed']} {r['val']:.3f} / {r['test']:.3f}" for r in rows))


def run_default(work: Path, name: str, epochs: int, seed: int) -> None:
    """The trainer's default config on this mission, one run per benchmark seed (its training seed)."""
    mission = load_mission(MISSION, agentexp.config.MISSIONS_DIR)
    train_once(
        work,
        name,
        f"{name}-default",
        [*mission.overrides, f"trainer.epochs={epochs}", f"trainer.seed={seed}"],
    )


def _ms(values) -> str:
    return (
        f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"
        if len(values) > 1
        else f"{values[0]:.3f}"
    )


if __name__ == "__main__":
    main()
