"""The loop end to end: scripted LLM answers, the real gate, real trainer subprocesses, a real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentexp import tracking
from agentexp.cli import build_loop
from agentexp.config import compose_loop
from agentexp.executor import Executor
from agentexp.workspace import Workspace

FAST_TRAINING = "loop.train_overrides=['trainer.epochs=1','debug=fast','data.image_size=16']"


def decision(action: str = "train", **fields) -> str:
    base = {
        "action": action,
        "rationale": "resnet18 at lr 2e-3 is the baseline every later change is compared with",
        "monitor_seconds": 120,
    }
    if action == "train":
        base |= {
            "run_label": "resnet18-lr2e-3",
            "overrides": ["optim.lr=0.002"],
            "strategy_dimension": "optimization",
        }
    return json.dumps(base | fields)


def script(path: Path, raws: list[str]) -> Path:
    path.write_text("".join(json.dumps({"raw": raw}) + "\n" for raw in raws))
    return path


def run_loop(tmp_path: Path, raws: list[str], *extra: str) -> tuple[str, Workspace]:
    overrides = [
        "llm=scripted",
        f"llm.script={script(tmp_path / 'worker.jsonl', raws)}",
        "mentor.enabled=false",
        f"loop.workspace={tmp_path / '.llm_loop'}",
        "loop.poll_seconds=0",
        FAST_TRAINING,
        *extra,
    ]
    loop = build_loop(compose_loop(overrides))
    return loop.run(), loop.ws


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
    assert [e["cycle"] for e in events if e["event"] == "cycle_end"] == [1, 2, 3]
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
    gate_events = [e for e in ws.events() if e["event"] == "quality_gate"]
    assert any("hydra" in " ".join(e["quality_gate"]) for e in gate_events)


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
    reason, ws = run_loop(tmp_path, [decision(monitor_seconds=1), wait, wait, wait], *overrides, *extra)
    assert reason == "max_cycles"
    return ws


def test_silent_training_is_a_stale_orphan_and_recovery_stops_it(tmp_path, store, monkeypatch):
    ws = run_silent(tmp_path, monkeypatch, 300, "loop.stuck_wait_recovery=true")
    events = ws.events()
    (stale,) = [e for e in events if e["event"] == "stale_orphan"]
    assert stale["cycle"] == 4 and stale["run_label"] == "resnet18-lr2e-3" and stale["stopped"] is True
    (end,) = [e for e in events if e["event"] == "run_end"]
    assert end["run"]["status"] == "killed" and end["cycle"] == 4
    assert ws.load_state().active_runs == []
    assert not Executor.alive(stale["pid"])


def test_stale_orphan_is_only_reported_without_recovery(tmp_path, store, monkeypatch):
    ws = run_silent(tmp_path, monkeypatch, 8)  # silent, but ends by itself
    events = ws.events()
    (stale,) = [e for e in events if e["event"] == "stale_orphan"]
    assert stale["stopped"] is False
    (end,) = [e for e in events if e["event"] == "run_end"]
    assert end["run"]["status"] == "failed"  # it ran on until it ended; no summary line, so failed


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
