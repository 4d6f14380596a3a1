"""The loop's own time per cycle at 100 and at 5,000 cycles of prior history: median, p95 and their ratio.

For each history size a temp folder gets an MLflow sqlite store and a `.llm_loop/` workspace filled as a real
loop leaves them after N cycles; then the loop is built the way the CLI builds it and `run_cycle` is timed.
Worker and mentor run on the scripted backend (no LLM time), trainings on a no-op trainer that prints its
summary line and exits (launching it and noticing its end are timed, training is not). Everything else is
real: signals, context, prompts, the gate (trainer composition included), executor, workspace files and the
decision run's MLflow record (params, metrics, tags, artifacts, traces).
Usage: python bench/loop_overhead.py [--history 100 5000] [--cycles 100] [--rounds 2] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import random
import sqlite3
import statistics
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

from hydra import compose, initialize_config_dir
from mlflow.entities import Param
from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
from mlflow.tracking import MlflowClient
from sqlalchemy import create_engine, insert

from agentexp import tracking
from agentexp.cli import build_loop
from agentexp.config import compose_loop
from agentexp.decisions import MentorReview, WorkerDecision
from agentexp.events import (
    CycleEnd,
    CycleStart,
    Launch,
    Launched,
    LaunchIntent,
    MentorEvent,
    MentorRecord,
    RunEnd,
)
from agentexp.files import atomic_write_text
from agentexp.launchers.base import ActiveRun, Handle, RunOutcome
from agentexp.signals import CycleSummary
from agentexp.todos import TodoFile, TodoItem
from agentexp.todos import render as render_todos
from agentexp.workspace import State, Workspace
from trainers.config import CONF_DIR, from_hydra

EXPERIMENT = "digits"  # the default mission's experiment
GOAL_MS = 50.0  # median loop time per cycle
GOAL_GROWTH = 1.2  # p50 at the largest history / p50 at the smallest
CYCLE_MS = 60_000  # prior cycles are a minute apart
OPEN_TODOS = 8  # the prior queue keeps this many open; older items were resolved
NOOP_TRAINER = """
import json, sys
print("agentexp-summary: " + json.dumps({"metric": "val_acc", "best": 0.5, "run_id": None}))
"""
MODELS = ["resnet18", "resnet34", "efficientnet_b0", "mobilenetv3_small_100", "convnext_atto", "regnetx_002"]
DIMENSIONS = ["optimization", "model_arch", "augmentation", "loss", "preprocessing"]
NOTE = "val_acc stalls near the plateau; the last runs differ mostly in lr and augmentation strength. " * 3
RATIONALE = "the plateau near 0.91 calls for another learning rate before a new architecture"


# ---- prior history ---------------------------------------------------------------------------------


class Rows:
    """MLflow table rows inserted in one transaction: the client takes ~20 ms a run, minutes for 5,000."""

    def __init__(self, experiment_id: str, artifact_root: str) -> None:
        self.experiment_id, self.artifact_root = int(experiment_id), artifact_root.rstrip("/")
        self.tables: dict[type, list[dict]] = {SqlRun: [], SqlTag: [], SqlParam: [], SqlMetric: []}

    def run(self, name: str, start_ms: int, status: str, tags: dict, params: dict, metrics: dict) -> str:
        run_id = uuid.uuid4().hex
        self.tables[SqlRun].append(
            {
                "run_uuid": run_id,
                "name": name,
                "source_type": "LOCAL",
                "source_name": "",
                "entry_point_name": "",
                "user_id": "bench",
                "status": status,
                "start_time": start_ms,
                "end_time": start_ms + 1000,
                "source_version": "",
                "lifecycle_stage": "active",
                "artifact_uri": f"{self.artifact_root}/{run_id}/artifacts",
                "experiment_id": self.experiment_id,
            }
        )
        tags = {"mlflow.runName": name, "mlflow.user": "bench", **tags}
        self.tables[SqlTag] += [{"key": k, "value": str(v), "run_uuid": run_id} for k, v in tags.items()]
        self.tables[SqlParam] += [{"key": k, "value": str(v), "run_uuid": run_id} for k, v in params.items()]
        metric = {"timestamp": start_ms, "step": 0, "is_nan": False, "run_uuid": run_id}
        self.tables[SqlMetric] += [metric | {"key": k, "value": float(v)} for k, v in metrics.items()]
        return run_id

    def insert(self, uri: str) -> None:
        engine = create_engine(uri)
        with engine.begin() as conn:
            for table, rows in [*self.tables.items(), (SqlLatestMetric, self.tables[SqlMetric])]:
                conn.execute(insert(table.__table__), rows)
        engine.dispose()


def trainer_params() -> dict[str, str]:
    """The flattened resolved trainer config: the params a real train run logs (about 50)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        resolved = from_hydra(compose("train")).model_dump(mode="json")

    def flat(tree: dict, prefix: str = "") -> dict[str, str]:
        out = {}
        for key, value in tree.items():
            out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: str(value)}
        return out

    return flat(resolved)


def train_tags(label: str, overrides: list[str], trace: str, parent: str, ws: Workspace) -> dict:
    """The tags the trainer sets on a run (provenance included)."""
    versions = {f"{tracking.VERSION_PREFIX}{lib}": "1.0" for lib in ("torch", "lightning", "timm", "mlflow")}
    return {
        tracking.KIND: "train",
        tracking.PARENT_RUN_ID: parent,
        tracking.CYCLE_TRACE_ID: trace,
        tracking.OVERRIDES: json.dumps(["trainer.epochs=3", "data=digits", *overrides]),
        tracking.COMMAND: "python -m trainers.train " + " ".join(overrides),
        tracking.RUN_DIR: str(ws.root / "runs" / label),
        tracking.PID: 2,
        tracking.SEED: 42,
        tracking.DATA_FINGERPRINT: "d41d8cd98f00b204e9800998ecf8427e",
        tracking.SKIPPED_IMAGES: 0,
        tracking.GIT_STATUS: "ok",
        tracking.GIT_COMMIT: "7ea257e" * 5,
        tracking.GIT_DIRTY: "false",
        tracking.DEVICE: "cpu",
        tracking.GPU_NAME: "none",
        tracking.BEST_EPOCH: 2,
        **versions,
    }


def decision_record(cycle: int, trace: str, loop_id: str, action: str, label, dimension, overrides, outcome):
    """Tags, params and metrics of a decision run, as the loop logs them."""
    tags = {
        tracking.KIND: "decision",
        tracking.PARENT_RUN_ID: loop_id,
        tracking.CYCLE_TRACE_ID: trace,
        tracking.CYCLE: cycle,
        tracking.PID: 1,
        tracking.HOST: "bench",
        "agentexp.outcome": outcome,
    }
    signals = {"research_priority": 0.0, "non_training_priority": 0.1, "breakout_priority": 0.8}
    signals |= {"todo_pressure": 0.3, "stall_cycles": 12}
    params = {
        "action": action,
        "run_label": label or "",
        "strategy_dimension": dimension or "",
        "overrides": json.dumps(overrides),
        "monitor_seconds": 120,
        "llm": "planner",
        "mentor_trigger": "cadence" if cycle % 4 == 0 else "",
        **{f"signal.{k}": v for k, v in signals.items()},
    }
    metrics = {"latency_s": 0.8, "input_tokens": 3000, "output_tokens": 300, "cost_usd": 0.0, "llm_calls": 1}
    return tags, params, metrics | {"reasks": 0, "gate_violations": 0}


class Prior:
    """A loop's record after N cycles: one cycle in three launches a training that ends in the next one,
    every sixth analyzes (a note, a TODO), the mentor reviews every fourth and challenges every twentieth.
    The metric rises over the first 20 trainings and then stalls below its best, as long loops do."""

    def __init__(self, root: Path, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.uri = os.environ[tracking.ENV_URI]
        self.experiment_id = tracking.ensure_store(self.uri, EXPERIMENT)
        self.client = MlflowClient(self.uri)
        self.ws = Workspace(root / ".llm_loop").create()
        self.rows = Rows(self.experiment_id, self.client.get_experiment(self.experiment_id).artifact_location)
        self.config_params = trainer_params()
        self.events, self.story, self.notes, self.mentor_notes = [], [], [], []
        self.todos = TodoFile()
        self.trainings = 0
        self.launched: tuple | None = None

    def fill(self, n: int) -> dict:
        session = uuid.uuid4().hex
        self.loop_id = self._loop_run(session, n)
        self.start = int(time.time() * 1000) - (n + 1) * CYCLE_MS
        for cycle in range(1, n + 1):
            self._cycle(cycle)
        self.rows.insert(self.uri)
        self._write_workspace(State(session_id=session, loop_run_id=self.loop_id, cycle=n, llm_calls=n))
        return {"train_runs": self.trainings, "todos": len(self.todos.items), "notes": len(self.notes)}

    def _loop_run(self, session: str, n: int) -> str:
        tags = {tracking.KIND: "loop", tracking.SESSION: session, tracking.PID: "1"}
        run_id = self.client.create_run(
            self.experiment_id, run_name=f"loop-{session[:8]}", tags=tags
        ).info.run_id
        params = [Param("mission", EXPERIMENT), Param("llm", "planner"), Param("max_cycles", str(n))]
        self.client.log_batch(run_id, params=params)
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def _cycle(self, cycle: int) -> None:
        trace, at = tracking.trace_id_for(cycle), self.start + cycle * CYCLE_MS
        record = {"ts": at / 1000, "cycle": cycle, "cycle_trace_id": trace}
        action, label, dimension, overrides, outcome, parts = "wait", None, None, [], "waited", []
        if cycle % 3 == 1:
            action, outcome, dimension = "train", "launched", DIMENSIONS[cycle % len(DIMENSIONS)]
            model, lr = MODELS[cycle % len(MODELS)], round(10 ** self.rng.uniform(-4, -2), 6)
            label = f"r{cycle:05d}-{model}-lr{lr}"
            overrides = [f"model={model}", f"optim.lr={lr}", f"aug={self.rng.choice(['none', 'light'])}"]
            parts.append(f"train | {label} [{dimension}] {' '.join(overrides)}")
        elif cycle % 6 == 0:
            action, outcome = "analyze", "analyzed"
            self.notes.append(f"\n### cycle {cycle}\n{NOTE.strip()}\n")
            self._todo(f"compare augmentation strengths around cycle {cycle}", "worker", cycle)
            parts.append("analyze")
        else:
            parts.append("wait")
        self.events.append(CycleStart(**record))
        tags, params, metrics = decision_record(
            cycle, trace, self.loop_id, action, label, dimension, overrides, outcome
        )
        decision_id = self.rows.run(f"cycle-{cycle:04d}", at, "FINISHED", tags, params, metrics)
        metric = None
        if self.launched is not None:  # the previous cycle's training ends in this one
            metric, status = self._training_ends(record, parts)
            outcome = status if outcome == "waited" else outcome
        if label:
            self.launched = (label, overrides, trace, decision_id, at + 500, cycle)
            self._launch(record, label, overrides, decision_id)
        if cycle % 4 == 0:
            self._mentor(record, cycle, parts)
        summary = CycleSummary(
            cycle=cycle,
            action=action,
            run_label=label,
            strategy_dimension=dimension,
            outcome=outcome,
            metric=metric,
        )
        story = " | ".join(parts)
        self.events.append(CycleEnd(**record, summary=summary, decision_run_id=decision_id, story=story))
        self.story.append(f"- cycle {cycle} [{trace}] {story}\n")

    def _launch(self, record: dict, label: str, overrides: list[str], decision_id: str) -> None:
        """The launch journal a training leaves: the intent, then the started process."""
        run_dir = self.ws.root / "runs" / f"{label}-{record['cycle_trace_id']}"
        intent = LaunchIntent(
            run_label=label, attempt=1, overrides=overrides, parent_run_id=decision_id, run_dir=run_dir
        )
        self.events.append(Launch(**record, run=intent))
        handle = Handle(pid=2, started_at=record["ts"], host="bench")
        fields = intent.model_dump(exclude={"decision"})
        run = ActiveRun(
            **fields,
            handle=handle,
            log_path=self.ws.log_path(label),
            cycle=record["cycle"],
            cycle_trace_id=record["cycle_trace_id"],
        )
        self.events.append(Launched(**record, run=run))

    def _training_ends(self, record: dict, parts: list[str]) -> tuple[float | None, str]:
        label, overrides, trace, parent, started, launched_in = self.launched
        self.launched = None
        failed = self.rng.random() < 0.1
        metric = None if failed else round(self._metric(), 4)
        self.trainings += 1
        metrics = {"train_loss": 0.3, "val_loss": 0.4, "val_acc": metric or 0.1, "epoch": 2}
        if not failed:
            metrics |= {"best_val_acc": metric, "wall_time_s": 30.0, "images_per_s": 480.0}
        tags = train_tags(label, overrides, trace, parent, self.ws)
        status = "failed" if failed else "finished"
        run_id = self.rows.run(label, started, status.upper(), tags, self.config_params, metrics)
        ended = RunOutcome(
            run_label=label, status=status, returncode=int(failed), metric=metric, mlflow_run_id=run_id
        )
        run_dir = self.ws.root / "runs" / f"{label}-{trace}"
        self.events.append(
            RunEnd(cycle=launched_in, cycle_trace_id=trace, ts=record["ts"], run=ended, run_dir=run_dir)
        )
        parts.append(f"run {label} {status}" + (f" {metric:.4f}" if metric is not None else ""))
        return metric, status

    def _metric(self) -> float:
        if self.trainings < 20:
            return 0.95 * (1 - math.exp(-(self.trainings + 1) / 6))
        return 0.85 + 0.06 * self.rng.random()

    def _mentor(self, record: dict, cycle: int, parts: list[str]) -> None:
        verdict = "off_track" if cycle % 20 == 0 else "on_track"
        review = MentorReview(verdict=verdict, rationale="the plateau holds; try another architecture family")
        mentor = MentorRecord(trigger="cadence", review=review, error=None, replaced=False)
        self.events.append(MentorEvent(**record, mentor=mentor))
        parts.append(f"mentor (cadence): {verdict}")
        if verdict == "off_track":
            self.mentor_notes.append(f"\n### cycle {cycle}\nWhy not a wider model? {review.rationale}\n")
            self._todo(f"try convnext_atto at 48 px (cycle {cycle})", "mentor", cycle)

    def _todo(self, text: str, source: str, cycle: int) -> None:
        self.todos.items.append(
            TodoItem(id=self.todos.next_id, text=text, source=source, created_cycle=cycle)
        )
        self.todos.next_id += 1
        for item in [item for item in self.todos.items if not item.resolved][:-OPEN_TODOS]:
            item.resolved = True

    def _write_workspace(self, state: State) -> None:
        ws = self.ws
        ws.events_path.write_text("".join(e.model_dump_json() + "\n" for e in self.events), encoding="utf-8")
        ws.storyline_path.write_text("".join(self.story), encoding="utf-8")
        notes = "".join(self.notes).rstrip("\n") + "\n" if self.notes else ""
        workpad = f"# Workpad\n\n## Notes\n{notes}\n## Data Exploration\n\n"
        ws.workpad_path.write_text(workpad, encoding="utf-8")
        if self.mentor_notes:
            ws.mentor_notes_path.write_text("# Mentor notes\n" + "".join(self.mentor_notes), encoding="utf-8")
        atomic_write_text(ws.artifacts / "shared_todo.json", self.todos.model_dump_json(indent=2))
        atomic_write_text(ws.artifacts / "shared_todo.md", render_todos(self.todos))
        ws.save_state(state)


# ---- the timed cycles ------------------------------------------------------------------------------


def worker_script(first_cycle: int, cycles: int, todo_ids: list[int]) -> list[str]:
    """One decision per cycle, repeating: train, wait, analyze (a note, a TODO, a resolve), wait, wait."""
    out = []
    for i in range(cycles):
        decision = {"action": "wait", "rationale": RATIONALE, "monitor_seconds": 0}
        if i % 5 == 0:
            label = f"bench-c{first_cycle + i:05d}-lr"
            overrides = [f"optim.lr={0.001 + 0.0001 * (i % 7):.4f}", "model=resnet18"]
            decision |= {"action": "train", "run_label": label, "overrides": overrides}
            decision |= {"strategy_dimension": "optimization"}
        elif i % 5 == 2:
            chores = {"notes_update": NOTE, "todo_new": [f"check the lr sweep of cycle {first_cycle + i}"]}
            chores |= {"resolve_shared_todo_ids": todo_ids[i % 7 : i % 7 + 1]}
            decision |= {"action": "analyze", "housekeeping": chores}
        out.append(WorkerDecision.model_validate(decision).model_dump_json(exclude_defaults=True))
    return out


def mentor_script(calls: int) -> list[str]:
    """on_track reviews; every third a challenge with a TODO (no replacement: the worker's step runs)."""
    reviews = []
    for i in range(calls):
        review = {"verdict": "on_track", "rationale": "the runs so far support the current direction"}
        if i % 3 == 2:
            review = {"verdict": "off_track", "rationale": "three runs changed only the learning rate"}
            review |= {
                "critical_question": "why not another architecture?",
                "todo": f"try convnext_atto ({i})",
            }
        reviews.append(MentorReview.model_validate(review).model_dump_json(exclude_none=True))
    return reviews


def write_script(path: Path, raws: list[str]) -> Path:
    path.write_text("".join(json.dumps({"raw": raw}) + "\n" for raw in raws), encoding="utf-8")
    return path


def build(root: Path, history: int, total: int):
    """The loop as `agentexp loop` builds it, on the scripted backends and the no-op trainer."""
    queue = TodoFile.model_validate_json((root / ".llm_loop/artifacts/shared_todo.json").read_text())
    todo_ids = [item.id for item in queue.items if not item.resolved]
    worker = write_script(root / "worker.jsonl", worker_script(history + 1, total, todo_ids))
    mentor = write_script(root / "mentor.jsonl", mentor_script(total))
    overrides = [
        "llm=scripted",
        f"llm.script={worker}",
        "mentor/llm=scripted",
        f"mentor.llm.script={mentor}",
        f"loop.workspace={root / '.llm_loop'}",
        "loop.poll_seconds=0",
        f"loop.max_cycles={total}",
        "executor.trainer_module=bench_noop_trainer",
        "executor.monitor_seconds_default=0",  # no cycle waits for a training: only the loop is timed
        "code.enabled=false",  # knob decisions only: no incumbent branch in this checkout
    ]
    return build_loop(compose_loop(overrides))


def measure(root: Path, history: int, train_runs: int, args, profile: cProfile.Profile | None) -> dict:
    """Seconds of the session start (resume, first read of the training runs) and ms of each timed cycle."""
    loop = build(root, history, args.warmup + args.cycles)
    times, cpu_times = [], []
    with loop.ws.lock():
        started = time.perf_counter()
        state = loop._resume()
        seen = len(loop.tracker.training_runs())
        resume_s = time.perf_counter() - started
        if seen != train_runs or state.cycle != history:
            raise SystemExit(f"the prior history was not picked up: {seen} train runs, cycle {state.cycle}")
        for i in range(args.warmup + args.cycles):
            timed = i >= args.warmup
            if timed and profile:
                profile.enable()
            started, cpu = time.perf_counter(), time.process_time()
            loop.run_cycle(state)
            time.sleep(loop.cfg.loop.poll_seconds)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            if timed and profile:
                profile.disable()
            if timed:
                times.append(elapsed * 1000)
                cpu_times.append(cpu * 1000)
        loop.trainings.drain(lambda: False, lambda: None)
        loop.tracker.end_run(state.loop_run_id, "FINISHED")
    return {"resume_s": resume_s, "ms": times, "cpu_ms": cpu_times}


def one(history: int, args, profile: cProfile.Profile | None) -> dict:
    """Fill a fresh temp store and workspace with `history` cycles, then time the loop on it."""
    with tempfile.TemporaryDirectory(prefix="agentexp-bench-") as tmp:
        root = Path(tmp)
        (root / "bench_noop_trainer.py").write_text(textwrap.dedent(NOOP_TRAINER))
        keys = (tracking.ENV_URI, tracking.ENV_EXPERIMENT, "PYTHONPATH")
        saved = {key: os.environ.get(key) for key in keys}
        os.environ[tracking.ENV_URI] = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
        os.environ.pop(tracking.ENV_EXPERIMENT, None)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), saved["PYTHONPATH"]]))
        try:
            started = time.perf_counter()
            filled = Prior(root).fill(history)
            fill_s = time.perf_counter() - started
            if args.wal:
                with sqlite3.connect(root / "mlruns" / "mlflow.db") as db:
                    db.execute("PRAGMA journal_mode=WAL")
            return {"fill_s": fill_s, **filled, **measure(root, history, filled["train_runs"], args, profile)}
        finally:
            for key, value in saved.items():
                os.environ.pop(key, None)
                if value is not None:
                    os.environ[key] = value


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def print_profile(profile: cProfile.Profile) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats("agentexp", 30)
    stats.sort_stats("tottime").print_stats(15)
    print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, nargs="+", default=[100, 5000], help="prior cycles")
    parser.add_argument("--cycles", type=int, default=100, help="timed cycles per history size and round")
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed cycles first (first compose, templates)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternate the sizes this often (load drifts)")
    parser.add_argument("--profile", action="store_true", help="cProfile the largest history's cycles")
    parser.add_argument("--wal", action="store_true", help="diagnostic: the store in sqlite's WAL mode")
    parser.add_argument("--no-traces", action="store_true", help="diagnostic: LLM calls not logged as traces")
    args = parser.parse_args()
    if args.no_traces:
        tracking.Tracker.log_calls = lambda *_args, **_kwargs: None
    sizes = sorted(args.history)
    profile = cProfile.Profile() if args.profile else None
    times: dict[int, list[float]] = {size: [] for size in sizes}
    cpu: dict[int, list[float]] = {size: [] for size in sizes}
    flags = [name for name in ("wal", "no_traces") if getattr(args, name)]
    print(
        f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs); "
        f"diagnostics: {', '.join(flags) or 'none'}",
        flush=True,
    )
    for round_ in range(1, args.rounds + 1):
        for size in sizes:
            result = one(size, args, profile if size == sizes[-1] else None)
            times[size] += result["ms"]
            cpu[size] += result["cpu_ms"]
            print(
                f"round {round_}, history {size:5d}: filled in {result['fill_s']:.1f} s "
                f"({size} decision runs, "
                f"{result['train_runs']} train runs, {result['todos']} TODOs, {result['notes']} notes), "
                f"session start {result['resume_s']:.2f} s, {len(result['ms'])} cycles: "
                f"median {statistics.median(result['ms']):.1f} ms, p95 {p95(result['ms']):.1f} ms "
                f"(CPU median {statistics.median(result['cpu_ms']):.1f} ms)",
                flush=True,
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if profile:
        print_profile(profile)
    for size in sizes:
        ms = times[size]
        print(
            f"history {size:5d}: median {statistics.median(ms):6.1f} ms   p95 {p95(ms):6.1f} ms   "
            f"(CPU time of this process: median {statistics.median(cpu[size]):5.1f} ms, "
            f"p95 {p95(cpu[size]):5.1f} ms; n={len(ms)})"
        )
    growth = statistics.median(times[sizes[-1]]) / statistics.median(times[sizes[0]])
    cpu_growth = statistics.median(cpu[sizes[-1]]) / statistics.median(cpu[sizes[0]])
    print(
        f"growth p50({sizes[-1]})/p50({sizes[0]}): {growth:.2f}   (goal <= {GOAL_GROWTH}; "
        f"in CPU time {cpu_growth:.2f})"
    )
    worst = max(statistics.median(ms) for ms in times.values())
    print(f"worst median: {worst:.1f} ms   (goal <= {GOAL_MS:.0f} ms)")


if __name__ == "__main__":
    main()
