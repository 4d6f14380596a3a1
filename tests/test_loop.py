"""The loop end to end: scripted LLM answers, the real gate, real trainer subprocesses, a real store."""

from __future__ import annotations

import json

import pytest
from helpers import FAST_TRAINING, decision, run_loop, write_script
from typer.testing import CliRunner

from agentexp import budget, tracking
from agentexp.cli import app, build_loop
from agentexp.config import LoopSettings, compose_loop
from agentexp.events import CycleEnd, QualityGate, RunEnd, StaleOrphan
from agentexp.launchers.local import alive
from agentexp.workspace import State, Workspace


def test_three_cycles_leave_loop_decision_and_nested_training_runs(tmp_path, store):
    reason, ws = run_loop(
        tmp_path,
        [
            decision(),
            decision("wait"),
            decision(
                "analyze",
                housekeeping={"notes_update": "lr 2e-3 baseline finished", "todo_new": ["try mixup"]},
            ),
        ],
        "loop.max_cycles=3",
    )
    assert reason == "max_cycles"
    (loop_run,) = store.runs("loop")
    decisions = store.runs("decision")
    (train,) = store.runs("train")
    assert loop_run.info.status == "FINISHED"
    assert [d.data.tags[tracking.CYCLE] for d in decisions] == ["1", "2", "3"]
    assert all(d.data.tags[tracking.PARENT_RUN_ID] == loop_run.info.run_id for d in decisions)
    assert all(d.info.status == "FINISHED" for d in decisions)
    assert train.info.status == "FINISHED"
    assert train.data.tags[tracking.PARENT_RUN_ID] == decisions[0].info.run_id
    assert train.data.tags[tracking.CYCLE_TRACE_ID] == decisions[0].data.tags[tracking.CYCLE_TRACE_ID]
    assert train.data.params["optim.lr"] == "0.002" and train.data.params["trainer.epochs"] == "1"
    first = decisions[0]
    assert first.data.params["action"] == "train" and first.data.metrics["llm_calls"] == 1
    assert "signal.breakout_priority" in first.data.params
    artifacts = {a.path for a in store.client.list_artifacts(first.info.run_id)}
    assert {"decision.json", "prompt.md", "raw_response.txt"} <= artifacts
    traces = store.client.search_traces(locations=[loop_run.info.experiment_id])
    assert first.info.run_id in {t.info.trace_metadata.get("mlflow.sourceRun") for t in traces}
    events = ws.events()
    assert [e.cycle for e in events if isinstance(e, CycleEnd)] == [1, 2, 3]
    assert len(ws.storyline_tail(10)) == 3
    assert "lr 2e-3 baseline finished" in ws.workpad_tail(2000)
    assert ws.load_state().cycle == 3 and ws.load_state().active_runs == []


HOSTILE = [
    "not json at all",
    '{"action": "train"}',
    decision(rationale=123),
    decision(surprise="field"),
    decision(rationale="x" * 5000),
    decision(overrides=["hydra.run.dir=/"]),
    decision(overrides=["+_target_=os.system"]),
    decision(overrides=["data.root=../../etc"]),
    decision(overrides=["optim.lr=${oc.env:HOME}"]),
    decision(run_label="../escape"),
    decision(run_label="nul\u0000label"),
    decision(overrides=["optim.lr=nan"]),
    decision(overrides=["optim.lrr=0.1"]),
    decision(overrides=["model.name=resnet18; rm -rf /"]),
    decision(overrides=["optim.lr=1e-3,1e-4"]),
    decision(run_label="run"),
]


def test_hostile_outputs_downgrade_to_wait_and_a_good_one_launches_once(tmp_path, store):
    reason, ws = run_loop(
        tmp_path, [*HOSTILE, decision()], f"loop.max_cycles={len(HOSTILE) + 1}", "loop.max_reasks=0"
    )
    assert reason == "max_cycles"
    decisions = store.runs("decision")
    assert len(decisions) == len(HOSTILE) + 1
    assert [d.data.params["action"] for d in decisions] == ["wait"] * len(HOSTILE) + ["train"]
    assert all(
        d.data.tags["agentexp.outcome"] == "downgraded" or "agentexp.worker_error" in d.data.tags
        for d in decisions[:-1]
    )
    (train,) = store.runs("train")
    assert train.data.tags[tracking.PARENT_RUN_ID] == decisions[-1].info.run_id
    gate_events = [e for e in ws.events() if isinstance(e, QualityGate)]
    assert any("hydra" in " ".join(e.quality_gate) for e in gate_events)


def test_script_exhausted_stops_cleanly(tmp_path, store):
    reason, ws = run_loop(tmp_path, [decision("analyze")], "loop.max_cycles=5")
    assert reason == "script_exhausted"
    assert len(store.runs("decision")) == 1
    assert store.runs("loop")[0].info.status == "FINISHED"


def test_second_instance_refuses_to_start(tmp_path, store):
    loop = build_loop(compose_loop(["mentor.enabled=false", f"loop.workspace={tmp_path / '.llm_loop'}"]))
    with loop.ws.lock(), pytest.raises(Exception, match="another agentexp loop is running"):
        loop.run()


def run_silent(tmp_path, monkeypatch, sleep_s: int, *extra: str) -> Workspace:
    """A loop whose training never writes its log: it trains once, then waits three cycles."""
    (tmp_path / "silent_trainer.py").write_text(f"import time\ntime.sleep({sleep_s})\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    wait = decision("wait", monitor_seconds=1)
    overrides = ["loop.max_cycles=4", "executor.trainer_module=silent_trainer", "loop.stale_orphan_cycles=2"]
    overrides.append("executor.monitor_seconds_max=1")  # a wait watches until a run ends, at most this
    reason, ws = run_loop(tmp_path, [decision(monitor_seconds=1), wait, wait, wait], *overrides, *extra)
    assert reason == "max_cycles"
    return ws


def test_silent_training_is_a_stale_orphan_and_recovery_stops_it(tmp_path, store, monkeypatch):
    ws = run_silent(tmp_path, monkeypatch, 300, "loop.stuck_wait_recovery=true")
    events = ws.events()
    (stale,) = [e for e in events if isinstance(e, StaleOrphan)]
    assert stale.cycle == 4 and stale.run_label == "resnet18-lr2e-3" and stale.stopped is True
    (end,) = [e for e in events if isinstance(e, RunEnd)]
    assert end.run.status == "killed" and end.cycle == 1  # a training's events belong to its cycle
    assert ws.load_state().active_runs == []
    assert not alive(stale.pid)


def test_stale_orphan_is_only_reported_without_recovery(tmp_path, store, monkeypatch):
    ws = run_silent(tmp_path, monkeypatch, 8)  # silent, but ends by itself
    events = ws.events()
    (stale,) = [e for e in events if isinstance(e, StaleOrphan)]
    assert stale.stopped is False
    (end,) = [e for e in events if isinstance(e, RunEnd)]
    assert end.run.status == "failed"  # it ran on until it ended; no summary line, so failed


def test_call_budget_stops_the_loop_cleanly(tmp_path, store):
    reason, ws = run_loop(tmp_path, [decision("analyze")] * 5, "loop.max_cycles=5", "loop.max_llm_calls=2")
    assert reason == "llm_call_budget"
    assert ws.load_state().llm_calls == 2 and len(store.runs("decision")) == 2


def test_cost_budget_counts_reported_tokens_at_configured_prices(tmp_path, store):
    lines = [
        json.dumps({"raw": decision("analyze"), "usage": {"input_tokens": 1_000_000, "output_tokens": 0}})
    ]
    (tmp_path / "costly.jsonl").write_text("\n".join(lines * 5) + "\n")
    loop = build_loop(
        compose_loop(
            [
                "llm=scripted",
                f"llm.script={tmp_path / 'costly.jsonl'}",
                "llm.input_cost_per_mtok=1.0",
                "mentor.enabled=false",
                f"loop.workspace={tmp_path / '.llm_loop'}",
                "loop.poll_seconds=0",
                "loop.max_cycles=5",
                "loop.max_cost_usd=1.5",
            ]
        )
    )
    assert loop.run() == "cost_budget"
    assert loop.ws.load_state().cost_usd == pytest.approx(2.0)
    assert [d.data.metrics["cost_usd"] for d in store.runs("decision")] == [1.0, 1.0]


def test_max_trainings_ends_the_loop_once_its_trainings_have_ended(tmp_path, store):
    # Each decision watches its training to its end (the watch returns then), however loaded the machine.
    raws = [
        decision(run_label=f"resnet18-lr{i}e-3", overrides=[f"optim.lr=0.00{i}"], monitor_seconds=600)
        for i in range(1, 6)
    ]
    reason, ws = run_loop(tmp_path, raws, "loop.max_cycles=10", "loop.max_trainings=2")
    assert reason == "max_trainings"
    trains = store.runs("train")
    assert [r.info.run_name for r in trains] == ["resnet18-lr1e-3", "resnet18-lr2e-3"]
    assert all(r.info.status == "FINISHED" for r in trains)
    assert len(store.runs("decision")) == 2  # it did not go on cycling
    assert [e.run.status for e in ws.events() if isinstance(e, RunEnd)] == ["finished", "finished"]


@pytest.mark.parametrize(
    ("spent", "reason"), [(4.0, None), (5.0, None), (5.25, "max_trainings"), (6.0, "max_trainings")]
)
def test_a_training_starts_only_while_a_whole_one_fits_the_budget(spent, reason):
    # 5.25: five whole trainings and a pruned one that ran a quarter of its epochs; a sixth would end at 6.25
    settings = LoopSettings(max_cycles=100, poll_seconds=0, workspace="ws", max_trainings=6)
    assert budget.spent(settings, State(), spent, 0.0) == reason


def test_the_console_shows_one_line_per_cycle_and_a_closing_summary(tmp_path, store):
    raws = [decision(), decision("wait", monitor_seconds=1)]
    args = [
        "llm=scripted",
        f"llm.script={write_script(tmp_path / 'w.jsonl', raws)}",
        "mentor.enabled=false",
        f"loop.workspace={tmp_path / '.llm_loop'}",
        "loop.poll_seconds=0",
        FAST_TRAINING,
        "loop.max_cycles=2",
    ]
    loud = CliRunner().invoke(app, ["loop", *args])
    assert loud.exit_code == 0, loud.output
    lines = loud.output.splitlines()
    assert any("cycle 1 | train resnet18-lr2e-3 | launched |" in line for line in lines), loud.output
    assert any("cycle 2 | wait |" in line for line in lines)
    assert "loop stopped: max_cycles" in lines
    (train,) = store.runs("train")
    assert any(line.strip().startswith("1. resnet18-lr2e-3") and train.info.run_id in line for line in lines)
    assert any(line.startswith("report: ") for line in lines) and any("MLflow UI" in line for line in lines)
    wait = write_script(tmp_path / "wait.jsonl", [decision("wait", monitor_seconds=0)])
    quiet_args = [a if not a.startswith("llm.script=") else f"llm.script={wait}" for a in args]
    quiet_args = [
        a if not a.startswith("loop.workspace=") else f"loop.workspace={tmp_path / 'q'}" for a in quiet_args
    ]
    quiet = CliRunner().invoke(app, ["loop", "-q", *quiet_args])
    assert quiet.exit_code == 0 and quiet.output.splitlines() == ["loop stopped: script_exhausted"]


def test_a_report_lands_in_the_workspace_the_loop_was_given(tmp_path, store):
    elsewhere = tmp_path / "elsewhere"
    reason, _ = run_loop(tmp_path, [decision()], "loop.max_cycles=1", f"loop.workspace={elsewhere}")
    assert reason == "max_cycles"
    result = CliRunner().invoke(
        app, ["finishup", "--force-report-now", "--workspace", str(elsewhere), "--top-k", "3"]
    )
    assert result.exit_code == 0, result.output
    assert (elsewhere / "artifacts" / "final_leaderboard_top3.json").exists()
    assert not (tmp_path / ".llm_loop" / "artifacts" / "final_leaderboard_top3.json").exists()
