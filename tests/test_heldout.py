"""One validation split per leaderboard, a held-out test scored in its own process, and test numbers kept
away from every agent."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import TINY, compose_train, decision, digits_split, run_loop, write_image
from mlflow.entities import Metric, Param
from omegaconf import OmegaConf
from typer.testing import CliRunner

from agentexp import context, evaluate, finisher, heldout, ranking, tracking
from agentexp.cli import app
from agentexp.decisions import Action, WorkerDecision
from agentexp.gate import GateConfig, check
from agentexp.mission import MISSIONS_DIR, load_mission
from agentexp.ranking import Entry
from agentexp.signals import Signals
from agentexp.workspace import Workspace
from trainers import evaluate as evaluator
from trainers.config import CONF_DIR
from trainers.train import train

METRIC = "best_val_acc"
CALM = Signals(
    research_priority=0.2, non_training_priority=0.1, breakout_priority=0.1, todo_pressure=0.0, stall_cycles=0
)
SECRET = 0.987654
"""A held-out score no agent may ever see."""


def row(run_id: str, value: float, split: str | None, start: int, config: str = "optim.lr=0.01") -> dict:
    tags = {tracking.OVERRIDES: json.dumps([config, f"trainer.seed={start}"])}
    if split is not None:
        tags[tracking.DATA_SPLIT] = split
    return {
        "run_id": run_id,
        "run_name": run_id,
        "status": "FINISHED",
        "start_time": start,
        "end_time": start + 1,
        "metrics": {METRIC: value},
        "params": {},
        "tags": tags,
    }


def log_train(store, label: str, metrics: dict[str, float], split: str, config: list[str]) -> str:
    """A finished training logged the way the trainer logs one (hand-made: no process)."""
    experiment_id = tracking.ensure_store(store.uri, "test")
    tags = {
        tracking.KIND: "train",
        tracking.OVERRIDES: json.dumps([*config, f"run_label={label}"]),
        tracking.SEED: "42",
        tracking.DATA_SPLIT: split,
    }
    start = int(time.time() * 1000)
    run = store.client.create_run(experiment_id, start, tags, label)
    store.client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, v, start, 0) for k, v in metrics.items()],
        params=[Param("model.name", "resnet18"), Param("trainer.epochs", "1")],
    )
    store.client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


# ---- one validation split -----------------------------------------------------------------------


def test_runs_on_another_validation_split_are_not_ranked_together():
    rows = [
        row("old-best", 0.99, "split-a", 1, "optim.lr=0.1"),  # a better number, on other patients
        row("new-a", 0.70, "split-b", 2),
        row("new-b", 0.80, "split-b", 3),  # same configuration as new-a: grouped
        row("old-same-config", 0.10, "split-a", 4),  # same config on the old split: not grouped in
        row("newest", 0.60, "split-b", 5, "optim.lr=0.2"),
    ]
    assert ranking.choose_split(rows, METRIC) == "split-b"
    entries = ranking.rank(rows, METRIC, "maximize")
    assert [e.seed_run_ids for e in entries] == [["new-a", "new-b"], ["newest"]]
    assert entries[0].mean == pytest.approx(0.75)
    note = ranking.split_note(rows, METRIC)
    assert note.startswith("2 finished runs were scored on another validation split") and "split-b" in note
    assert ranking.split_note(rows[1:3], METRIC) == ""


def test_minimize_ranks_the_lowest_mean_first_on_one_split():
    rows = [row("a", 0.30, "s", 1, "x=1"), row("b", 0.10, "s", 2, "x=2"), row("c", 0.05, "t", 0, "x=3")]
    entries = ranking.rank(rows, "best_val_acc", "minimize")
    assert [e.run_id for e in entries] == ["b", "a"]  # c is lower but on another split
    assert [e.run_id for e in ranking.rank(rows, METRIC, "maximize")] == ["a", "b"]


def test_leaderboard_cli_and_context_say_when_they_left_out_another_split(store, ws):
    log_train(store, "lr-old-split", {METRIC: 0.95}, "split-a", ["optim.lr=0.1"])
    log_train(store, "lr-new-split", {METRIC: 0.60}, "split-b", ["optim.lr=0.01"])
    out = CliRunner().invoke(app, ["leaderboard", "--uri", store.uri, "--experiment", "test"])
    assert out.exit_code == 0, out.output
    assert "lr-new-split" in out.output and "lr-old-split" not in out.output
    assert "1 finished run was scored on another validation split" in out.output
    experiment_id = tracking.find_experiment(store.uri, "test")
    rows = tracking.run_table(store.uri, experiment_id, "train", (METRIC,), (), ranking.KEY_TAGS)
    ctx = context.build(ws, rows, [], CALM, load_mission("digits", MISSIONS_DIR), 1, [], None)
    assert [e["run_label"] for e in ctx.leaderboard] == ["lr-new-split"]
    assert "another validation split" in ctx.leaderboard_note


# ---- the held-out test ------------------------------------------------------------------------


COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}


def colour_folder(root: Path, per_class: int, shift: int = 0) -> Path:
    for name, (r, g, b) in COLORS.items():
        for i in range(per_class):
            write_image(root / name / f"{i}.png", (r, g + i + shift, b))
    return root


def train_tiny(tmp_path: Path, label: str, overrides: list[str]) -> str:
    config = [*TINY, "trainer.epochs=1", "data.num_workers=0", *overrides, f"run_label={label}"]
    return train(compose_train(config), tmp_path / label, config)["run_id"]


@pytest.mark.slow
def test_a_test_folder_is_held_out_and_evaluate_logs_test_acc_in_its_own_process(tmp_path, store):
    root = colour_folder(tmp_path / "images", 8)
    colour_folder(root / "test", 3, shift=2)
    run_id = train_tiny(tmp_path, "with-test", ["data=imagefolder", f"data.root={root}"])
    run = store.client.get_run(run_id)
    assert run.data.params["data.kind"] == "imagefolder"
    assert "evaluation/per_class_report.json" in tracking.artifact_paths(store.uri, run_id, "evaluation")
    report = json.loads(
        Path(store.client.download_artifacts(run_id, "evaluation/per_class_report.json")).read_text()
    )
    assert "test" not in report  # the test folder is never a class
    assert evaluate.CHECKPOINT in tracking.artifact_paths(store.uri, run_id, "checkpoints")
    assert run.data.tags[tracking.TEST_DATA] == str(root / "test")
    assert not any(tracking.held_out(k) for k in run.data.metrics)  # training never scores the test data

    out = CliRunner().invoke(app, ["evaluate", run_id, "--uri", store.uri])
    assert out.exit_code == 0, out.output
    scored = store.client.get_run(run_id).data
    assert (
        out.output.strip() == f"run {run_id}: test_acc = {scored.metrics['test_acc']:.4f} (logged on the run)"
    )
    assert 0 <= scored.metrics["test_acc"] <= 1 and len(scored.tags[tracking.TEST_FINGERPRINT]) == 16

    other = colour_folder(tmp_path / "new-patients", 2, shift=5)
    evaluator.main([run_id, "--data", str(other)])  # in this process: the subprocess path ran above
    assert (
        store.client.get_run(run_id).data.tags[tracking.TEST_FINGERPRINT]
        != scored.tags[tracking.TEST_FINGERPRINT]
    )


def test_evaluate_says_in_one_line_why_it_cannot_score(tmp_path, store):
    plain = log_train(store, "no-checkpoint", {METRIC: 0.5}, "s", ["optim.lr=0.01"])
    cases = {
        "no-such-run": "no run no-such-run in",
        plain: f"run {plain} has no logged checkpoint",
    }
    for run_id, expected in cases.items():
        out = CliRunner().invoke(app, ["evaluate", run_id, "--uri", store.uri])
        assert out.exit_code == 2 and expected in out.output and len(out.output.strip().splitlines()) == 1
    # a digits training with tracking.log_checkpoint=true: a checkpoint, but no test data to score it on
    digits = log_train(store, "digits-checkpoint", {METRIC: 0.5}, "s", ["optim.lr=0.01"])
    store.client.log_dict(digits, compose_train(TINY).model_dump(mode="json"), "config/resolved.yaml")
    (tmp_path / "best.ckpt").write_bytes(b"not read: the missing test data is found first")
    store.client.log_artifact(digits, str(tmp_path / "best.ckpt"), "checkpoints")
    out = CliRunner().invoke(app, ["evaluate", digits, "--uri", store.uri])
    assert out.exit_code == 2 and len(out.output.strip().splitlines()) == 1
    assert f"run {digits} has no test data configured" in out.output and "give --data PATH" in out.output
    assert "test_acc" not in store.client.get_run(digits).data.metrics


@pytest.mark.slow
def test_finish_up_scores_the_top_k_on_test_csv_and_the_report_sets_them_beside_validation(tmp_path, store):
    lines = ["path,label"] + [f"{i}.png,{'ab'[i % 2]}" for i in range(24)]
    for i in range(24):
        write_image(tmp_path / f"{i}.png", (200 * (i % 2), 40 + i, 40))
    (tmp_path / "train.csv").write_text("\n".join(lines[:17]) + "\n")
    (tmp_path / "test.csv").write_text("\n".join([lines[0], *lines[17:]]) + "\n")
    data = [
        "data=csv",
        f"data.csv_path={tmp_path / 'train.csv'}",
        f"data.test_csv_path={tmp_path / 'test.csv'}",
    ]
    ids = [train_tiny(tmp_path, f"lr-{lr}", [*data, f"optim.lr={lr}"]) for lr in ("0.01", "0.001")]
    ws = Workspace(tmp_path / ".llm_loop").create()
    src = tracking.Source(store.uri, "test", METRIC, "maximize")
    files = finisher.write_report(ws, src, 2)
    tested = {i: store.client.get_run(i).data.metrics["test_acc"] for i in ids}
    paper = Path(next(f for f in files if f.endswith("final_paper_report.md"))).read_text()
    assert "Held-out test" in paper and "Spearman rank correlation" in paper
    for value in tested.values():
        assert f"{value:.4f} (1)" in paper
    assert "the record holds no held-out test set" not in paper


# ---- the comparison in the report ---------------------------------------------------------------


def entry(rank: int, mean: float, std: float | None, runs: list[str]) -> Entry:
    return Entry(
        rank=rank,
        run_id=runs[0],
        run_label=f"config-{rank}",
        metric=METRIC,
        mean=mean,
        std=std,
        n=len(runs),
        best=mean,
        seed_run_ids=runs,
        seeds=[],
        overrides=[],
        key_overrides=[],
        model=None,
        epochs=None,
        wall_time_s=None,
        git_commit=None,
        cycle=None,
        command=None,
        start_time=rank,
    )


def test_the_report_flags_tests_outside_the_validation_noise_band_and_correlates_ranks():
    entries = [
        entry(1, 0.90, 0.01, ["a1", "a2"]),  # band 0.01 of its own: test 0.80 lies far outside
        entry(2, 0.85, None, ["b"]),  # one run: the widest band among seeded configs (0.03)
        entry(3, 0.80, 0.03, ["c1", "c2", "c3"]),
        entry(4, 0.70, None, ["d"]),  # never scored
    ]
    tests = {"a1": 0.79, "a2": 0.81, "b": 0.86, "c1": 0.70, "c2": 0.72}
    rows = [{"run_id": k, "metrics": {"test_acc": v}} for k, v in tests.items()]
    found = heldout.compare(entries, rows, "test_acc")
    assert [r.outside for r in found.rows] == [True, False, True, False]
    assert [r.band for r in found.rows] == [0.01, 0.03, 0.03, 0.03]
    assert [r.test_n for r in found.rows] == [2, 1, 2, 0]
    assert found.spearman == pytest.approx(0.5)  # val ranks 3,2,1 against test ranks 2,3,1
    assert "outside the validation noise band: config-1, config-3" in heldout.summary(found)
    assert heldout.compare(entries, [], "test_acc") is None
    assert heldout.spearman([1, 2, 3], [3, 3, 3]) is None and heldout.spearman(
        [1, 2], [2, 4]
    ) == pytest.approx(1)


# ---- no agent sees a test number ----------------------------------------------------------------


def test_no_context_or_prompt_contains_a_test_number(tmp_path, store):
    run_id = log_train(
        store, "resnet18-scored", {METRIC: 0.5, "test_acc": SECRET}, digits_split(), ["optim.lr=0.01"]
    )
    experiment_id = tracking.find_experiment(store.uri, "test")
    rows = tracking.run_table(store.uri, experiment_id, "train", (METRIC, "test_acc"), (), ranking.KEY_TAGS)
    assert rows[0]["metrics"]["test_acc"] == SECRET  # a query that reads every metric sees it ...
    view = context.RunView(rows, METRIC)
    assert all(not any(tracking.held_out(k) for k in r["metrics"]) for r in view.rows)  # ... a context never
    ctx = context.build(
        Workspace(tmp_path / "w").create(), view, [], CALM, load_mission("digits", MISSIONS_DIR), 1, [], None
    )
    assert str(SECRET) not in ctx.model_dump_json() and f"{SECRET:.4f}" not in ctx.model_dump_json()

    reason, ws = run_loop(tmp_path, [decision("analyze"), decision("wait")], "loop.max_cycles=2")
    assert reason == "max_cycles"
    texts = []
    for d in store.runs("decision"):
        for a in store.client.list_artifacts(d.info.run_id):
            texts.append(
                Path(store.client.download_artifacts(d.info.run_id, a.path, str(tmp_path))).read_text()
            )
    texts += [p.read_text(errors="replace") for p in ws.root.rglob("*") if p.is_file()]
    prompt = "\n".join(texts)
    assert "resnet18-scored" in prompt and run_id in prompt  # the scored run is in the prompts ...
    assert (
        str(SECRET) not in prompt and f"{SECRET:.4f}" not in prompt and f"{SECRET:.3f}" not in prompt
    )  # ... not its test


def test_the_gate_refuses_a_path_override_that_names_held_out_test_data():
    cfg = GateConfig.model_validate(
        OmegaConf.to_container(OmegaConf.load(CONF_DIR / "gate" / "default.yaml"))
    )

    def verdict(overrides: list[str]):
        why = "the held-out test set must never be trained on"
        return check(
            WorkerDecision(
                action=Action.TRAIN,
                rationale=why,
                run_label="resnet18-paths",
                overrides=overrides,
                strategy_dimension="augmentation",
            ),
            cfg,
        )

    for override in ("data.root=data/images/test", "data.csv_path=data/test.csv"):
        assert verdict([override]).violations == [
            f"Override '{override}' names held-out test data, which no training may read."
        ]
    assert verdict(["data.root=data/images", "data.csv_path=data/train.csv"]).passed
    assert not verdict(["data.test_csv_path=data/other.csv"]).passed  # not a key an agent may set
