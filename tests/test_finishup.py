"""Finish-up: schedule math, the seed plan, and the loop running the final round, reporting and stopping."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import digits_split, scripted_loop
from mlflow.entities import Metric, Param
from typer.testing import CliRunner

from agentexp import finisher, finishup, tracking
from agentexp.cli import _schedule, app
from agentexp.events import FinishUpDone
from agentexp.finishup import FinishUpError
from agentexp.workspace import Workspace

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TINY = ["trainer.epochs=1", "debug=fast", "data.image_size=16"]
METRIC = "best_val_acc"
REPORT = ["final_leaderboard_top1.json", "final_condensed_story.md", "final_paper_report.html"]


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


# ---- schedule ------------------------------------------------------------------------------------


def test_minutes_left_activates_now_with_the_defaults():
    f = finishup.schedule(NOW, minutes_left=60, note="final hour")
    assert (f.activate_at_utc, f.deadline_utc) == (NOW, NOW + timedelta(minutes=60))
    assert (f.final_training_rounds, f.top_k, f.seeds_per_candidate, f.state) == (1, 10, 3, "scheduled")
    assert finishup.is_active(f, NOW)
    assert finishup.deadline_text(f, NOW) == "2026-06-01T13:00:00Z (60 min left; final hour)"


def test_run_hours_and_minutes_left_schedule_ahead():
    f = finishup.schedule(NOW, minutes_left=60, run_hours=8)
    assert f.deadline_utc == NOW + timedelta(hours=8)
    assert f.activate_at_utc == NOW + timedelta(hours=7)
    assert not finishup.is_active(f, NOW + timedelta(hours=6, minutes=59))
    assert finishup.is_active(f, NOW + timedelta(hours=7))
    f.state = "cancelled"
    assert not finishup.is_active(f, NOW + timedelta(hours=7))


def test_activation_in_the_future():
    f = finishup.schedule(NOW, activate_in_minutes=30)
    assert f.activate_at_utc == NOW + timedelta(minutes=30) and not finishup.is_active(f, NOW)
    f = finishup.schedule(NOW, activate_at_utc="2026-12-01T22:00:00Z", minutes_left=45)
    assert f.activate_at_utc == datetime(2026, 12, 1, 22, tzinfo=UTC)
    assert f.deadline_utc == datetime(2026, 12, 1, 22, 45, tzinfo=UTC)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"activate_at_utc": "2026-05-01T00:00:00Z"},
            "--activate-at-utc 2026-05-01T00:00:00Z is in the past",
        ),
        ({"run_hours": 0.5, "minutes_left": 60}, "60 minutes left is longer than --run-hours 0.5"),
        ({"activate_at_utc": "tomorrow"}, "'tomorrow' is not an ISO 8601 time"),
        ({"activate_in_minutes": 1, "activate_at_utc": "2026-12-01T22:00:00Z"}, "not both"),
        ({}, "say when"),
    ],
)
def test_impossible_schedules_are_one_clear_line(options, message):
    with pytest.raises(FinishUpError, match=message) as err:
        finishup.schedule(NOW, **options)
    assert "\n" not in str(err.value)


def test_cli_schedules_shows_and_cancels(tmp_path):
    ws = Workspace(tmp_path / ".llm_loop")
    result = cli(
        "finishup", "--run-hours", "8", "--minutes-left", "60", "--top-k", "5", "--note", "final hour"
    )
    assert result.exit_code == 0, result.output
    stored = finisher.load(ws)
    assert stored.top_k == 5 and stored.note == "final hour" and stored.state == "scheduled"
    assert stored.deadline_utc - stored.activate_at_utc == timedelta(minutes=60)
    shown = cli("finishup", "--show").output
    assert "state: scheduled" in shown and "top-k: 5" in shown
    status = cli("status").output
    assert "finish-up: scheduled, deadline" in status and "final hour" in status
    assert cli("finishup", "--cancel").output.strip() == "finish-up cancelled"
    assert "state: cancelled" in cli("finishup", "--show").output
    ws.clear_finishup()
    assert cli("finishup", "--show").output.strip() == "no finish-up scheduled"


def test_cli_past_time_and_start_conflict_fail_in_one_line(tmp_path):
    result = cli("finishup", "--activate-at-utc", "2020-01-01T00:00:00Z")
    assert result.exit_code == 2
    assert result.output.strip().startswith("Error: --activate-at-utc 2020-01-01T00:00:00Z is in the past")
    result = cli("start", "--run-hours", "0.5", "--finishup-minutes", "60")
    assert result.exit_code == 2 and "longer than --run-hours 0.5" in result.output
    assert not (tmp_path / ".llm_loop" / "FINISH_UP.json").exists()


def test_start_schedules_the_deadline_at_the_end_of_the_run(tmp_path):
    ws = Workspace(tmp_path / ".llm_loop")
    before = datetime.now(UTC)
    _schedule(ws, 60, 8, 2, 4)
    f = finisher.load(ws)
    assert before + timedelta(hours=8) <= f.deadline_utc <= datetime.now(UTC) + timedelta(hours=8)
    assert f.deadline_utc - f.activate_at_utc == timedelta(minutes=60)
    assert (f.final_training_rounds, f.top_k) == (2, 4)


# ---- seed plan -----------------------------------------------------------------------------------


def row(label: str, value: float | None, config: list[str], seed: int = 42, status: str = "FINISHED") -> dict:
    overrides = [*config, f"trainer.seed={seed}", f"run_label={label}"]
    return {
        "run_id": f"id-{label}-{seed}",
        "run_name": label,
        "status": status,
        "start_time": 1_000_000,
        "end_time": 1_030_000,
        "metrics": {METRIC: value} if value is not None else {},
        "params": {},
        "tags": {tracking.OVERRIDES: json.dumps(overrides), tracking.SEED: str(seed)},
    }


def test_seed_plan_tops_up_the_top_k_with_unused_seeds():
    a, b, c = ["optim.lr=0.002"], ["optim.lr=0.001"], ["aug=strong"]
    runs = [
        row("lr2e-3", 0.95, a),
        row("lr2e-3-seed1", 0.93, a, seed=1),
        row("lr1e-3", 0.90, b),
        row("lr1e-3-seed1", None, b, seed=1, status="RUNNING"),
        row("lr1e-3-seed3", None, b, seed=3, status="FAILED"),
        row("strong", 0.80, c),
    ]
    plan = finishup.seed_plan(runs, top_k=2, seeds_per_candidate=3, metric=METRIC)
    assert [(p.run_label, p.seed, p.candidate) for p in plan] == [
        ("lr2e-3-seed2", 2, "lr2e-3"),  # 42 and 1 done: one more, seed 1 taken
        ("lr1e-3-seed2", 2, "lr1e-3"),  # 42 done, 1 running, 3 failed: one more
    ]
    assert plan[0].overrides == ["optim.lr=0.002", "trainer.seed=2"]
    assert plan[0].estimate_s == pytest.approx(30 + finishup.LAUNCH_OVERHEAD_S)
    assert finishup.seed_plan(runs, top_k=3, seeds_per_candidate=1, metric=METRIC) == []
    assert len(finishup.seed_plan(runs, top_k=3, seeds_per_candidate=3, metric=METRIC)) == 4


def test_seed_plan_follows_the_metric_direction():
    runs = [row("low", 0.1, ["optim.lr=0.1"]), row("high", 0.9, ["optim.lr=0.2"])]
    (best,) = {p.candidate for p in finishup.seed_plan(runs, 1, 2, metric=METRIC, direction="minimize")}
    assert best == "low"


# ---- the loop ------------------------------------------------------------------------------------


def log_run(store, label: str, value: float, config: list[str]) -> str:
    """A finished training run shaped like the trainer's, started a few seconds ago."""
    experiment_id = tracking.ensure_store(store.uri, "test")
    overrides = [*config, f"run_label={label}"]
    tags = {
        tracking.KIND: "train",
        tracking.OVERRIDES: json.dumps(overrides),
        tracking.SEED: "42",
        tracking.COMMAND: "python -m trainers.train " + " ".join(overrides),
        tracking.DATA_SPLIT: digits_split(),
    }
    start = int(time.time() * 1000) - 5000
    run = store.client.create_run(experiment_id, start, tags, label)
    params = [Param("model.name", "resnet18"), Param("trainer.epochs", "1"), Param("trainer.seed", "42")]
    metrics = [Metric(METRIC, value, start, 0), Metric("wall_time_s", 3.0, start, 0)]
    store.client.log_batch(run.info.run_id, metrics=metrics, params=params)
    store.client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def schedule_now(tmp_path: Path, **options) -> None:
    f = finishup.schedule(datetime.now(UTC), minutes_left=60, **options)
    finisher.save(Workspace(tmp_path / ".llm_loop").create(), f)


def test_final_round_reruns_the_top_candidate_with_seeds_then_reports_and_stops(tmp_path, store):
    best = log_run(store, "resnet18-lr2e-3", 0.9, [*TINY, "optim.lr=0.002"])
    log_run(store, "resnet18-lr1e-3", 0.01, [*TINY, "optim.lr=0.001"])  # stays behind whatever the seeds get
    schedule_now(tmp_path, top_k=1, note="final hour")
    # Two slots: the loop starts the first seed run, glances at it, starts the second in the next cycle.
    slots = ["executor.max_concurrent=2", "executor.monitor_seconds_default=0"]
    loop = scripted_loop(tmp_path, [], "loop.max_cycles=5", *slots)  # no LLM answer needed: the loop drives

    assert loop.run() == "finish_up"

    seeds = sorted(
        (r for r in store.runs("train") if r.info.run_name.endswith(("-seed1", "-seed2"))),
        key=lambda r: r.info.run_name,
    )
    assert [r.info.run_name for r in seeds] == ["resnet18-lr2e-3-seed1", "resnet18-lr2e-3-seed2"]
    assert all(r.info.status == "FINISHED" for r in seeds)
    assert [r.data.params["trainer.seed"] for r in seeds] == ["1", "2"]
    decisions = {d.info.run_id: d for d in store.runs("decision")}
    for run, seed in zip(seeds, (1, 2), strict=True):
        launched = decisions[run.data.tags[tracking.PARENT_RUN_ID]]
        assert launched.data.params["action"] == "train"
        assert launched.data.params["strategy_dimension"] == "evaluation"
        assert launched.data.metrics["llm_calls"] == 0
        text = store.client.download_artifacts(launched.info.run_id, "decision.json", str(tmp_path))
        rationale = json.loads(Path(text).read_text())["rationale"]
        assert rationale == f"finish-up: seed {seed} for candidate resnet18-lr2e-3"
    artifacts = tmp_path / ".llm_loop" / "artifacts"
    assert all((artifacts / name).exists() for name in REPORT)
    (top,) = json.loads((artifacts / "final_leaderboard_top1.json").read_text())
    assert top["n"] == 3 and best in top["seed_run_ids"]
    f = finisher.load(loop.ws)
    assert f.state == "done" and f.round == 1 and f.launched == [r.info.run_name for r in seeds]
    assert f.pending == [] and f.skipped == []
    assert [e.event for e in loop.ws.events()][-1] == "finish_up"
    assert store.runs("loop")[0].info.status == "FINISHED"


def train_decision(**fields) -> str:
    decision = {
        "action": "train",
        "rationale": "a longer resnet18 run shows whether more epochs still help before the deadline",
        "run_label": "resnet18-long",
        "overrides": ["trainer.epochs=50"],
        "strategy_dimension": "optimization",
        "monitor_seconds": 600,
    }
    return json.dumps(decision | fields)


def test_deadline_mid_run_kills_the_training_and_still_reports(tmp_path, store):
    log_run(store, "resnet18-lr2e-3", 0.9, [*TINY, "optim.lr=0.002"])
    schedule_now(tmp_path, top_k=1, final_training_rounds=0)  # the agents work until the deadline
    loop = scripted_loop(tmp_path, [train_decision()], "loop.max_cycles=3")

    def clock() -> float:  # the deadline passes once the training is under way
        running = [r for r in store.runs("train") if r.info.status == "RUNNING"]
        return time.time() + (2 * 3600 if running else 0)

    loop.clock = clock
    assert loop.run() == "finish_up"

    killed = [r for r in store.runs("train") if r.info.run_name == "resnet18-long"]
    assert [r.info.status for r in killed] == ["KILLED"]
    (decision,) = store.runs("decision")
    prompt = Path(store.client.download_artifacts(decision.info.run_id, "prompt.md", str(tmp_path)))
    assert "**Deadline: " in prompt.read_text() and decision.data.params["action"] == "train"
    assert (tmp_path / ".llm_loop" / "artifacts" / "final_paper_report.md").exists()
    end = [e for e in loop.ws.events() if isinstance(e, FinishUpDone)]
    assert end[0].stopped == ["resnet18-long"] and end[0].files
    assert finisher.load(loop.ws).state == "done"


def test_force_report_now_writes_the_report_without_training(tmp_path, store):
    log_run(store, "resnet18-lr2e-3", 0.9, [*TINY, "optim.lr=0.002"])
    log_run(store, "resnet18-lr1e-3", 0.8, [*TINY, "optim.lr=0.001"])
    schedule_now(tmp_path, top_k=1)

    result = cli("finishup", "--force-report-now")

    assert result.exit_code == 0, result.output
    artifacts = tmp_path / ".llm_loop" / "artifacts"
    assert str(artifacts / "final_paper_report.md") in result.output.splitlines()
    assert all((artifacts / name).exists() for name in REPORT)
    assert len(store.runs("train")) == 2
    f = finisher.load(Workspace(tmp_path / ".llm_loop"))
    assert f.state == "done" and f.launched == [] and len(f.report_files) == len(result.output.splitlines())


def test_force_report_on_an_empty_store_is_one_line_and_changes_nothing(tmp_path):
    schedule_now(tmp_path, top_k=1)
    result = cli("finishup", "--force-report-now")
    assert result.exit_code == 2
    assert result.output.startswith("Error: no experiment 'test'") and result.output.count("\n") == 1
    assert finisher.load(Workspace(tmp_path / ".llm_loop")).state == "scheduled"
