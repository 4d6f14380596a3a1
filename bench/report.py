"""The final leaderboard query and the whole report on stores of 1,000 and 10,000 training runs.

One sqlite store grows from the smallest size to the largest; at each size it times the top-k query
(`agentexp leaderboard`), the whole report (`agentexp report`: every file, figures, artifacts logged on the
loop run) and, as the baseline, reading the same training runs through MlflowClient.search_runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from agentexp import report, tracking
from agentexp.paper import PER_CLASS

EXPERIMENT = "bench"
METRIC = "best_val_acc"
DIMENSIONS = ("augmentation", "loss", "model_arch", "optimization")
MODELS = ("resnet18", "efficientnet_b0", "mobilenetv3_small_100", "convnext_atto")
EXTRA_PARAMS = 44
"""Params beyond the ones the report reads: a trainer run logs about 50."""
TRAINS_PER_DECISION = 5
CHUNK = 250
"""Runs per fill job (a multiple of TRAINS_PER_DECISION)."""


def fill_parallel(uri: str, experiment_id: str, loop_id: str, start: int, stop: int, jobs: int) -> None:
    """Fill [start, stop) in chunks on `jobs` processes: MLflow's per-call overhead, not sqlite, bounds it."""
    chunks = [(uri, experiment_id, loop_id, a, min(a + CHUNK, stop)) for a in range(start, stop, CHUNK)]
    with ProcessPoolExecutor(jobs) as pool:
        list(pool.map(_fill_chunk, chunks))


def _fill_chunk(args: tuple) -> None:
    uri, *rest = args
    fill(MlflowClient(uri), *rest)


def fill(client: MlflowClient, experiment_id: str, loop_id: str, start: int, stop: int) -> None:
    """Training runs shaped like the trainer's, one decision run (the parent) per few trainings."""
    rng = random.Random(start)
    parent = None
    for i in range(start, stop):
        if i % TRAINS_PER_DECISION == 0 or parent is None:
            parent = _decision(client, experiment_id, loop_id, i)
        config, seed = (i // 3, i % 3) if i % 30 < 3 else (i, 42)  # every tenth configuration has 3 seeds
        overrides = ["trainer.epochs=3", "data=digits", f"optim.lr={1e-6 * (1 + config):.6g}"]
        overrides += [f"model={MODELS[config % 4]}", f"run_label=r{i}"]
        overrides += [f"trainer.seed={seed}"] if seed != 42 else []
        status = "FAILED" if i % 50 == 7 else "KILLED" if i % 100 == 13 else "FINISHED"
        tags = {
            tracking.KIND: "train",
            tracking.OVERRIDES: json.dumps(overrides),
            tracking.CYCLE_TRACE_ID: f"c{i // TRAINS_PER_DECISION + 1:05d}-bench",
            tracking.PARENT_RUN_ID: parent,
            tracking.SEED: str(seed),
            tracking.GIT_COMMIT: "0" * 40,
            tracking.COMMAND: "python -m trainers.train " + " ".join(overrides),
            tracking.DEVICE: "cpu",
            tracking.GPU_NAME: "none",
        }
        run = client.create_run(experiment_id, run_name=f"r{i}", tags=tags, start_time=1_000_000 + i)
        params = [Param("model.name", MODELS[config % 4]), Param("trainer.epochs", "3")]
        params += [Param("data.kind", "digits"), Param("data.image_size", "32")]
        params += [Param(f"cfg.p{j}", str(j)) for j in range(EXTRA_PARAMS)]
        metrics = [Metric("val_acc", rng.random(), 0, step) for step in range(3)]
        if status == "FINISHED":
            value = 0.8 + 0.15 * ((config * 7919) % 1000) / 1000 + 0.01 * rng.random()
            metrics += [Metric(METRIC, value, 0, 0), Metric("wall_time_s", 20 + rng.random(), 0, 0)]
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=[RunTag("x.filler", "y" * 40)])
        client.set_terminated(run.info.run_id, status, end_time=1_000_500 + i)


def _decision(client: MlflowClient, experiment_id: str, loop_id: str, i: int) -> str:
    cycle = i // TRAINS_PER_DECISION + 1
    tags = {tracking.KIND: "decision", tracking.PARENT_RUN_ID: loop_id}
    tags[tracking.CYCLE_TRACE_ID] = f"c{cycle:05d}-bench"
    run = client.create_run(experiment_id, run_name=f"cycle-{cycle:04d}", tags=tags, start_time=1_000_000 + i)
    params = [Param("action", "train"), Param("strategy_dimension", DIMENSIONS[cycle % 4])]
    params += [Param("run_label", f"r{i}")]
    metrics = [Metric("llm_calls", 1, 0, 0), Metric("cost_usd", 0.001, 0, 0)]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def timed(fn, repeat: int) -> float:
    """Median seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(src: report.Source, experiment_id: str, k: int, repeat: int, out: Path) -> dict[str, float]:
    client = MlflowClient(src.uri)
    top = report.leaderboard(src, k)
    client.log_dict(top[0].run_id, _per_class(), PER_CLASS)  # the trainer logs one per run
    return {
        "topk": timed(lambda: report.leaderboard(src, k), repeat),
        "report": timed(lambda: report.write_report(src, k, out), repeat),
        "search_runs": timed(
            lambda: tracking._search_table(client, experiment_id, "train", (METRIC,), (), ()), 1
        ),
    }


def _per_class() -> dict:
    rows = {str(c): {"precision": 0.9, "recall": 0.9, "f1-score": 0.9, "support": 36} for c in range(10)}
    return rows | {"accuracy": 0.9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="training runs")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3, help="timed calls per figure (median)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes filling a store")
    parser.add_argument("--keep", type=Path, help="keep the stores in this folder and reuse them next time")
    args = parser.parse_args()
    shm = Path("/dev/shm")  # tmpfs where there is one: the fill is bound by fsyncs, not by the code timed
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        base = args.keep.resolve() if args.keep else Path(tmp)
        results = {size: run_size(base / str(size), size, args) for size in sorted(args.sizes)}
    _print(results, args.top_k)


def run_size(root: Path, size: int, args) -> dict[str, float]:
    """Fill (or top up) the store of one size, then time the queries on it."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root}/mlflow.db"
    experiment_id = tracking.ensure_store(uri, EXPERIMENT)
    loop_id = tracking.newest_run(uri, experiment_id, "loop")
    if loop_id is None:
        tags = {tracking.KIND: "loop"}
        loop_id = MlflowClient(uri).create_run(experiment_id, run_name="loop", tags=tags).info.run_id
    filled = len(tracking.run_table(uri, experiment_id, "train"))
    started = time.perf_counter()
    fill_parallel(uri, experiment_id, loop_id, filled, size, args.jobs)
    added, took = max(size - filled, 0), time.perf_counter() - started
    print(f"store of {size:,} training runs: {added:,} added in {took:.0f} s", flush=True)
    src = report.Source(uri=uri, experiment=EXPERIMENT, metric=METRIC)
    result = measure(src, experiment_id, args.top_k, args.repeat, root)
    print(f"{size:>7,} runs: " + ", ".join(f"{k} {v:.3f} s" for k, v in result.items()), flush=True)
    return result


def _print(results: dict[int, dict[str, float]], k: int) -> None:
    sizes = sorted(results)
    print(
        f"\n| training runs | top-{k} query (goal <= 1 s) | whole report (goal <= 10 s) | search_runs read |"
    )
    print("|---|---|---|---|")
    for size in sizes:
        r = results[size]
        print(f"| {size:,} | {r['topk']:.3f} s | {r['report']:.2f} s | {r['search_runs']:.2f} s |")
    if len(sizes) > 1:
        low, high = results[sizes[0]], results[sizes[-1]]
        growth = ", ".join(
            f"{name} x{high[name] / low[name]:.1f}" for name in ("topk", "report", "search_runs")
        )
        print(f"\ngrowth {sizes[0]:,} -> {sizes[-1]:,} runs (x{sizes[-1] / sizes[0]:.0f} runs): {growth}")
    largest = results[sizes[-1]]
    print(
        f"goals at {sizes[-1]:,} runs: top-k {'met' if largest['topk'] <= 1 else 'MISSED'}, "
        f"report {'met' if largest['report'] <= 10 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
