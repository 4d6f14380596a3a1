"""The final leaderboard, story and paper report, read from a store filled the way the trainer and loop do."""

from __future__ import annotations

import base64
import json
import math
import statistics

import pytest
from helpers import TINY, compose_train
from mlflow.entities import Metric, Param
from typer.testing import CliRunner

from agentexp import report, tracking
from agentexp.cli import app
from agentexp.events import RunEnd
from agentexp.launchers.base import RunOutcome
from agentexp.paper import PER_CLASS
from agentexp.ranking import markdown_table
from agentexp.workspace import Workspace
from trainers.train import train as run_trainer

METRIC = "best_val_acc"
PNG = b"\x89PNG\r\n\x1a\n"


class Fill:
    """Runs shaped like the trainer's and the loop's, written straight into the test store."""

    def __init__(self, store):
        self.uri, self.client = store.uri, store.client
        self.experiment_id = tracking.ensure_store(store.uri, "test")
        self.clock = 1_700_000_000_000
        self.loop_id: str | None = None

    def _next(self) -> int:
        self.clock += 1000
        return self.clock

    def loop(self) -> str:
        tags = {tracking.KIND: "loop"}
        run = self.client.create_run(self.experiment_id, run_name="loop", tags=tags, start_time=self._next())
        self.client.log_param(run.info.run_id, "llm", "scripted")
        self.loop_id = run.info.run_id
        return self.loop_id

    def decision(self, cycle: int, dimension: str, label: str) -> tuple[str, str]:
        trace = f"c{cycle:05d}-0000abcd"
        tags = {tracking.KIND: "decision", tracking.CYCLE_TRACE_ID: trace, tracking.CYCLE: str(cycle)}
        if self.loop_id:
            tags[tracking.PARENT_RUN_ID] = self.loop_id
        run = self.client.create_run(self.experiment_id, self._next(), tags, f"cycle-{cycle:04d}")
        params = [Param("action", "train"), Param("strategy_dimension", dimension), Param("run_label", label)]
        metrics = [Metric("llm_calls", 1, 0, 0), Metric("cost_usd", 0.002, 0, 0)]
        self.client.log_batch(run.info.run_id, metrics=metrics, params=params)
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id, trace

    def train(
        self,
        label,
        value,
        overrides=(),
        *,
        seed=None,
        status="FINISHED",
        decision=None,
        start=None,
        code=None,
    ):
        argv = ["trainer.epochs=3", "data=digits", *overrides]
        argv += [f"trainer.seed={seed}"] if seed is not None else []
        tags = {
            tracking.KIND: "train",
            tracking.OVERRIDES: json.dumps([*argv, f"run_label={label}"]),
            tracking.SEED: str(seed if seed is not None else 42),
            tracking.GIT_COMMIT: "ab12" * 10,
            tracking.COMMAND: "python -m trainers.train " + " ".join([*argv, f"run_label={label}"]),
            tracking.DEVICE: "cpu",
            tracking.GPU_NAME: "none",
            **(code or {}),
        }
        if decision is not None:
            tags[tracking.PARENT_RUN_ID], tags[tracking.CYCLE_TRACE_ID] = decision
        run = self.client.create_run(self.experiment_id, start or self._next(), tags, label)
        metrics = [Metric("wall_time_s", 10.0 + len(label), 0, 0)]
        metrics += [Metric(METRIC, value, 0, 0)] if value is not None else []
        params = [Param("model.name", "resnet18"), Param("trainer.epochs", "3"), Param("data.kind", "digits")]
        self.client.log_batch(
            run.info.run_id, metrics=metrics, params=[*params, Param("data.image_size", "32")]
        )
        self.client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    def source(self, direction: str = "maximize") -> tracking.Source:
        return tracking.Source(uri=self.uri, experiment="test", metric=METRIC, direction=direction)


@pytest.fixture
def fill(store) -> Fill:
    return Fill(store)


@pytest.mark.parametrize(
    ("direction", "expected"), [("maximize", ["b", "c", "a"]), ("minimize", ["a", "c", "b"])]
)
def test_leaderboard_follows_the_metric_direction(fill, direction, expected):
    for label, value in (("a", 0.70), ("b", 0.90), ("c", 0.80)):
        fill.train(label, value, [f"optim.lr={value}"])
    entries = report.leaderboard(fill.source(direction), 3)
    assert [e.run_label for e in entries] == expected
    assert [e.rank for e in entries] == [1, 2, 3]
    assert [e.run_label for e in report.leaderboard(fill.source(direction), 2)] == expected[:2]


def test_ties_go_to_the_run_that_started_first(fill):
    late = fill.train("late", 0.9, ["optim.lr=0.1"], start=fill.clock + 50_000)
    early = fill.train("early", 0.9, ["optim.lr=0.2"], start=fill.clock + 10_000)
    assert [e.run_id for e in report.leaderboard(fill.source(), 5)] == [early, late]


def test_failed_killed_and_running_runs_are_left_out(fill):
    fill.train("crashed", 0.99, ["optim.lr=1"], status="FAILED")
    fill.train("stopped", 0.98, ["optim.lr=2"], status="KILLED")
    fill.train("still", 0.97, ["optim.lr=3"], status="RUNNING")
    kept = fill.train("done", 0.50, ["optim.lr=4"])
    fill.train("no-metric", None, ["optim.lr=5"])
    assert [e.run_id for e in report.leaderboard(fill.source(), 10)] == [kept]


def test_seed_runs_aggregate_into_mean_std_n(fill):
    ids = [
        fill.train("lr3", 0.90, ["optim.lr=0.003"]),
        fill.train("lr3-s1", 0.97, ["optim.lr=0.003"], seed=1),
        fill.train("lr3-s2", 0.92, ["optim.lr=0.003"], seed=2),
    ]
    fill.train("lr3-s3", 0.99, ["optim.lr=0.003"], seed=3, status="FAILED")
    single = fill.train("lr1", 0.935, ["optim.lr=0.001"])
    top, second = report.leaderboard(fill.source(), 10)
    assert (top.run_id, second.run_id) == (single, ids[1])  # 0.935 beats the mean 0.93, not the best 0.97
    assert second.n == 3 and second.seed_run_ids == ids and second.seeds == ["42", "1", "2"]
    assert second.mean == pytest.approx(statistics.fmean([0.90, 0.97, 0.92]))
    assert second.std == pytest.approx(statistics.stdev([0.90, 0.97, 0.92]))
    assert second.best == 0.97 and second.key_overrides == ["optim.lr=0.003"]
    assert (top.n, top.std) == (1, None)
    table = markdown_table([top, second])
    assert "| 0.9300 ± 0.0361 (3) |" in table and "| 0.9350 |" in table
    assert all(f"`{run_id}`" in table for run_id in ids)


def scenario(fill: Fill, tmp_path) -> dict[str, str]:
    """One loop: optimization helped, model_arch failed twice (one run crashed, one never started)."""
    fill.loop()
    ws = Workspace(tmp_path / ".llm_loop")
    ids = {
        "base": fill.train(
            "base", 0.90, ["optim.lr=0.001"], decision=fill.decision(1, "optimization", "base")
        )
    }
    ids["lr3"] = fill.train("lr3", 0.95, ["optim.lr=0.003"], decision=fill.decision(2, "optimization", "lr3"))
    ids["effnet"] = fill.train(
        "effnet",
        None,
        ["model=efficientnet_b0"],
        status="FAILED",
        decision=fill.decision(3, "model_arch", "effnet"),
    )
    ids["bogus"], trace = fill.decision(4, "model_arch", "bogus")
    tail = "Traceback (most recent call last):\nError: Unsupported model.name 'bogus': not a timm model"
    run_end = RunOutcome(run_label="bogus", status="failed", returncode=1, error_tail=tail)
    ws.append_event(RunEnd(cycle=4, cycle_trace_id=trace, run=run_end))
    crash = RunOutcome(run_label="effnet", status="failed", returncode=1, error_tail="RuntimeError: CUDA oom")
    ws.append_event(RunEnd(cycle=3, cycle_trace_id="c00003-0000abcd", run=crash))
    fill.client.log_dict(
        ids["lr3"], {"0": {"recall": 0.9}, "1": {"recall": 1.0}, "accuracy": 0.95}, PER_CLASS
    )
    return ids


def test_story_and_report_name_what_helped_and_what_failed(fill, tmp_path):
    ids = scenario(fill, tmp_path)
    report.write_report(fill.source(), 10, Workspace(tmp_path / ".llm_loop"))
    out = tmp_path / ".llm_loop" / "artifacts"
    story = (out / "final_condensed_story.md").read_text()
    assert "## optimization: tried 2, helped 1, failed 0" in story
    assert "## model_arch: tried 2, helped 0, failed 2" in story
    helped = story.split("- Helped")[1].split("- Failed")[0]
    assert ids["lr3"] in helped and ids["base"] not in helped
    assert "Unsupported model.name 'bogus'" in story and "RuntimeError: CUDA oom" in story
    for name in ("final_paper_report.md", "final_paper_report.html"):
        text = (out / name).read_text()
        assert "optimization" in text and "model_arch" in text
        assert all(run_id in text for run_id in ids.values()), name
        assert "Unsupported model.name" in text
    paper = (out / "final_paper_report.md").read_text()
    for section in ("Abstract", "Setup", "Method", "Results", "Gains by strategy dimension", "Figures"):
        assert f"## {section}" in paper
    assert "## Appendix: reproducibility" in paper and "python -m trainers.train trainer.epochs=3" in paper
    assert "agentexp reproduce RUN_ID" in paper
    assert "cpu, GPU none (3 runs)" in paper


def code(commit: str, label: str, outcome: str) -> dict[str, str]:
    """The tags a code experiment's training carries."""
    branch = f"agentexp/digits/{label}"
    return {tracking.CODE_COMMIT: commit, tracking.CODE_BRANCH: branch, tracking.CODE_OUTCOME: outcome}


def test_kept_code_changes_show_their_diff_and_gain_and_the_leaderboard_names_the_code(fill, tmp_path):
    fill.loop()
    fill.train("base", 0.90, decision=fill.decision(1, "optimization", "base"))
    loser, winner = fill.decision(2, "model_arch", "tiny"), fill.decision(3, "model_arch", "cnn")
    fill.client.log_text(loser[0], "+LOSING CHANGE\n", "code/patch.diff")
    fill.client.log_text(
        winner[0], "diff --git a/trainers/recipe/model.py b/x\n+SmallCNN\n", "code/patch.diff"
    )
    fill.train("tiny", 0.20, decision=loser, code=code("d1" * 20, "c2-tiny", "discarded"))
    fill.train("cnn", 0.95, decision=winner, code=code("c3" * 20, "c3-cnn", "confirming"))
    confirm = fill.train(
        "cnn-confirm", 0.97, seed=43, decision=winner, code=code("c3" * 20, "c3-cnn", "kept")
    )
    report.write_report(fill.source(), 5, Workspace(tmp_path / ".llm_loop"))
    out = tmp_path / ".llm_loop" / "artifacts"
    for name in ("final_condensed_story.md", "final_paper_report.md", "final_paper_report.html"):
        section = (out / name).read_text().split("Code changes")[1]
        assert section.count("c3c3c3c3c3c3") == 1 and confirm in section, name
        assert "+0.0700 over the best run of other code before it" in section and "+SmallCNN" in section
        assert "LOSING" not in section and "agentexp/digits/c3-cnn" in section
    table = (out / "final_leaderboard_top5.md").read_text()
    assert "| code=c3c3c3c3c3c3 |" in table and "| code=d1d1d1d1d1d1 |" in table
    (base,) = [line for line in table.splitlines() if "| base |" in line]
    assert base.endswith("| - | 1 | - |")  # the checkout's own code


def test_without_a_kept_code_change_the_story_says_so(fill, tmp_path):
    scenario(fill, tmp_path)
    report.write_report(fill.source(), 10, Workspace(tmp_path / ".llm_loop"))
    story = (tmp_path / ".llm_loop" / "artifacts" / "final_condensed_story.md").read_text()
    assert "## Code changes\n\nNo code experiment was kept" in story


def test_html_embeds_its_figures_and_the_files_land_on_the_newest_loop_run(fill, tmp_path, store):
    older = fill.loop()
    scenario(fill, tmp_path)
    files = report.write_report(fill.source(), 10, Workspace(tmp_path / ".llm_loop"))
    html = (tmp_path / ".llm_loop" / "artifacts" / "final_paper_report.html").read_text()
    images = [part.split('"')[0] for part in html.split('src="data:image/png;base64,')[1:]]
    assert len(images) == 3  # best vs cycle, leaderboard bars, per-class accuracy
    assert all(base64.b64decode(image).startswith(PNG) for image in images)
    logged = {a.path for a in store.client.list_artifacts(fill.loop_id, "report")}
    assert logged == {f"report/{path.name}" for path in files}
    assert "report/final_leaderboard_top10.json" in logged
    assert not store.client.list_artifacts(older, "report")


def test_every_leaderboard_number_matches_mlflow(fill, tmp_path, store):
    scenario(fill, tmp_path)
    fill.train("lr3-s1", 0.93, ["optim.lr=0.003"], seed=1, decision=fill.decision(5, "evaluation", "lr3-s1"))
    report.write_report(fill.source(), 5, Workspace(tmp_path / ".llm_loop"))
    out = tmp_path / ".llm_loop" / "artifacts"
    rows = json.loads((out / "final_leaderboard_top5.json").read_text())
    table = (out / "final_leaderboard_top5.md").read_text()
    assert len(rows) == 2
    for row in rows:
        run = store.client.get_run(row["run_id"])
        values = [store.client.get_run(r).data.metrics[METRIC] for r in row["seed_run_ids"]]
        assert row["best"] == run.data.metrics[METRIC] == max(values)
        assert row["mean"] == pytest.approx(statistics.fmean(values)) and row["n"] == len(values)
        assert row["wall_time_s"] == run.data.metrics["wall_time_s"]
        assert str(row["epochs"]) == run.data.params["trainer.epochs"]
        assert row["model"] == run.data.params["model.name"]
        assert row["git_commit"] == run.data.tags[tracking.GIT_COMMIT]
        assert row["command"] == run.data.tags[tracking.COMMAND]
        first = store.client.get_run(row["seed_run_ids"][0])
        assert row["cycle"] == tracking.cycle_of(first.data.tags[tracking.CYCLE_TRACE_ID])
        line = next(x for x in table.splitlines() if f"| `{row['run_id']}` |" in x)
        cells = [c.strip() for c in line.strip("|").split("|")]
        std = f" ± {statistics.stdev(values):.4f} ({len(values)})" if len(values) > 1 else ""
        assert cells[3] == f"{statistics.fmean(values):.4f}{std}"
        assert cells[7] == f"{run.data.metrics['wall_time_s']:.1f}" and cells[10] == str(row["cycle"])
        assert cells[9] == "-" and row["code_commit"] is None  # no code experiment: the checkout's code
    assert rows[0]["n"] == 2 and rows[0]["std"] == pytest.approx(statistics.stdev([0.95, 0.93]))
    assert [
        e.model_dump(mode="json") for e in report.leaderboard(fill.source(), 5)
    ] == rows  # the top-k query


def test_projected_read_matches_search_runs(fill):
    fill.loop()
    fill.train("a", 0.5, ["optim.lr=0.1"], decision=fill.decision(1, "loss", "a"))
    fill.train("b", math.nan, ["optim.lr=0.2"], status="FAILED")
    keys = {"metrics": (METRIC, "wall_time_s"), "params": ("model.name",), "tags": (tracking.OVERRIDES,)}
    for kind in ("train", "decision", "loop"):
        fast = tracking.run_table(fill.uri, fill.experiment_id, kind, *keys.values())
        slow = tracking._search_table(fill.client, fill.experiment_id, kind, *keys.values())
        slow.sort(key=lambda r: (r["start_time"], r["run_id"]))
        assert json.dumps(fast) == json.dumps(slow) and fast, kind
    some = [fill.client.search_runs([fill.experiment_id], "attributes.run_name = 'b'")[0].info.run_id]
    fast = tracking.run_table(fill.uri, fill.experiment_id, "train", *keys.values(), run_ids=some)
    slow = tracking._search_table(fill.client, fill.experiment_id, "train", *keys.values(), run_ids=some)
    assert json.dumps(fast) == json.dumps(slow) and [r["run_id"] for r in fast] == some


def test_report_on_an_empty_store_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(app, ["report", "--top-k", "3", "--workspace", str(tmp_path / ".llm_loop")])
    assert result.exit_code != 0
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and "nothing to report" in line
    result = CliRunner().invoke(
        app, ["leaderboard", "--experiment", "other", "--uri", "sqlite:///elsewhere.db"]
    )
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1
    assert "'other'" in result.output and str(tmp_path / "elsewhere.db") in result.output
    assert not (tmp_path / "elsewhere.db").exists()  # a report never creates a store


def test_report_with_only_failed_runs_is_one_clear_line(fill):
    fill.train("crashed", None, status="FAILED")
    result = CliRunner().invoke(app, ["leaderboard", "--top-k", "3"])
    assert result.exit_code != 0
    assert result.output.strip() == (
        f"Error: no finished training run with {METRIC} in experiment 'test' "
        f"(1 training runs in {fill.uri}): nothing to report"
    )


def test_report_cli_on_real_tiny_trainings(tmp_path, store):
    for lr in ("0.002", "0.0005"):
        overrides = [*TINY, f"optim.lr={lr}"]
        run_trainer(compose_train(overrides), tmp_path / f"run-{lr}", overrides)
    result = CliRunner().invoke(app, ["report", "--top-k", "2", "--workspace", str(tmp_path / ".llm_loop")])
    assert result.exit_code == 0, result.output
    out = tmp_path / ".llm_loop" / "artifacts"
    rows = json.loads((out / "final_leaderboard_top2.json").read_text())
    runs = {r.info.run_id: r for r in store.runs("train")}
    assert {row["run_id"] for row in rows} == set(runs)
    assert [row["best"] for row in rows] == sorted(
        (r.data.metrics[METRIC] for r in runs.values()), reverse=True
    )
    assert rows[0]["key_overrides"] == [f"optim.lr={runs[rows[0]['run_id']].data.params['optim.lr']}"]
    assert (out / "final_fig_per_class.png").read_bytes().startswith(PNG)
    listed = CliRunner().invoke(app, ["leaderboard", "--top-k", "2"])
    assert listed.exit_code == 0 and all(f"`{row['run_id']}`" in listed.output for row in rows)


def test_leaderboard_and_report_rank_by_the_metric_and_direction_the_loop_recorded(fill, tmp_path):
    """A mission that minimizes val_loss: no --mission needed, the experiment's loop run says so."""
    loop = fill.loop()
    fill.client.log_batch(loop, params=[Param("metric", "best_val_loss"), Param("direction", "minimize")])
    ids = {}
    for label, loss in (("high", 0.40), ("low", 0.20), ("mid", 0.30)):
        run_id = fill.train(label, None, [f"optim.lr={loss}"])
        fill.client.log_metric(run_id, "best_val_loss", loss)
        ids[label] = run_id
    result = CliRunner().invoke(app, ["leaderboard", "--top-k", "3"])
    assert result.exit_code == 0, result.output
    ranked = [line for line in result.output.splitlines() if line.startswith("| ") and "`" in line]
    assert [ids[label] in line for line, label in zip(ranked, ("low", "mid", "high"), strict=True)] == [
        True
    ] * 3
    forced = CliRunner().invoke(app, ["leaderboard", "--mission", "digits"])
    assert forced.exit_code != 0 and "no finished training run with best_val_acc" in forced.output
    report.write_report(tracking.locate(fill.uri, "test", METRIC, "maximize"), 3, Workspace(tmp_path / "w"))
    (top, *_) = json.loads((tmp_path / "w" / "artifacts" / "final_leaderboard_top3.json").read_text())
    assert top["run_id"] == ids["low"] and top["metric"] == "best_val_loss"
