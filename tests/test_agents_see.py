"""What the agents are shown: the gate's allowlist, a fast failure's log tail, the mentor's alternatives,
the training slots; and a wait that watches until a run ends."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import FAST_TRAINING, decision, run_loop, write_script

from agentexp import context
from agentexp.agents.mentor import Mentor, MentorConfig
from agentexp.agents.worker import Worker
from agentexp.cli import build_loop
from agentexp.config import compose_loop
from agentexp.decisions import WorkerDecision
from agentexp.events import CycleEnd
from agentexp.gate import GateConfig
from agentexp.mission import MISSIONS_DIR, load_mission
from agentexp.signals import Signals

CALM = Signals(
    research_priority=0.2, non_training_priority=0.1, breakout_priority=0.1, todo_pressure=0.0, stall_cycles=0
)


def _prompts(store, tmp_path: Path) -> list[str]:
    """The worker prompt of every decision run, in cycle order."""
    prompts = []
    for run in store.runs("decision"):
        path = store.client.download_artifacts(run.info.run_id, "prompt.md", str(tmp_path / run.info.run_id))
        prompts.append(Path(path).read_text())
    return prompts


def _outcomes(ws) -> list[str]:
    return [e.summary.outcome for e in ws.events() if isinstance(e, CycleEnd)]


@pytest.fixture(scope="module")
def mission():
    return load_mission("digits", MISSIONS_DIR)


@pytest.fixture(scope="module")
def gate() -> GateConfig:
    return compose_loop([]).gate


def _ctx(ws, mission, active=(), max_concurrent=1) -> context.Context:
    return context.build(ws, [], [], CALM, mission, 3, list(active), None, max_concurrent=max_concurrent)


def test_the_prompts_list_every_key_the_gate_allows_with_its_choices_or_range(ws, mission, gate):
    ctx = _ctx(ws, mission)
    wait = WorkerDecision(action="wait", rationale="nothing to do while the baseline trains")
    for prompt in (
        Worker(None, mission, gate=gate).prompt(ctx),
        Mentor(None, mission, MentorConfig(), gate=gate).prompt(wait, ctx, "cadence"),
    ):
        assert f"at most {gate.max_overrides} overrides" in prompt
        for key in [*gate.allowed, *gate.ranges, *gate.paths]:
            assert f"- `{key}`: " in prompt
        assert "- `optim.schedule`: cosine | onecycle | constant" in prompt
        assert "- `loss.class_weights`: null | balanced" in prompt
        assert "- `optim`: adamw | sgd" in prompt  # a group's presets, read from conf/optim/
        assert "- `optim.lr`: 1e-05 to 1\n" in prompt and "- `trainer.seed`: 0 to 1000000\n" in prompt


def test_a_key_removed_from_the_gate_disappears_from_the_prompt(ws, mission, gate):
    settings = gate.model_dump()
    settings["choices"] = {k: v for k, v in gate.choices.items() if k != "optim.schedule"}
    settings["ranges"] = {k: v for k, v in settings["ranges"].items() if k != "optim.lr"}
    prompt = Worker(None, mission, gate=GateConfig.model_validate(settings)).prompt(_ctx(ws, mission))
    assert "optim.schedule" not in prompt and "`optim.lr`" not in prompt
    assert "- `optim.weight_decay`: 0 to 0.5" in prompt
    assert "quality gate accepts" not in Worker(None, mission).prompt(_ctx(ws, mission))  # no gate given


CRASH_LATER = """
import sys, time
time.sleep(0.5)
print("loading the data", flush=True)
raise SystemExit("RuntimeError: the data loader crashed")
"""


def test_a_training_that_crashes_between_cycles_shows_its_tail_in_the_next_prompt(
    tmp_path, store, monkeypatch
):
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    (fakes / "crash_later.py").write_text(CRASH_LATER)
    monkeypatch.setenv("PYTHONPATH", str(fakes), prepend=os.pathsep)
    reason, ws = run_loop(
        tmp_path,
        [decision(monitor_seconds=0), decision("analyze"), decision("analyze")],
        "loop.max_cycles=3",
        "loop.poll_seconds=2",  # the crash lands between cycle 1 and cycle 2
        "executor.monitor_seconds_default=0",
        "executor.trainer_module=crash_later",
        "repair.enabled=false",
    )
    assert reason == "max_cycles"
    assert _outcomes(ws) == ["launched", "failed", "analyzed"]  # found ended at cycle 2's start
    first, second, third = _prompts(store, tmp_path)
    assert "the data loader crashed" not in first
    for prompt in (second, third):
        assert "The last run failed" in prompt and "RuntimeError: the data loader crashed" in prompt


def test_the_mentors_architecture_alternatives_reach_the_notes_and_the_next_worker_prompt(tmp_path, store):
    review = {
        "verdict": "on_track",
        "rationale": "the baseline is sound; resnets dominate the board so far",
        "architecture_alternatives": ["convnext_atto", "regnetx_002"],
    }
    mentor_script = write_script(tmp_path / "mentor.jsonl", [json.dumps(review)])
    reason, ws = run_loop(
        tmp_path,
        [decision("analyze"), decision("analyze"), decision("analyze")],
        "loop.max_cycles=3",
        "mentor.enabled=true",
        "mentor/llm=scripted",
        f"mentor.llm.script={mentor_script}",
        "mentor.every_n_cycles=2",  # cycle 2 is reviewed: its alternatives show from cycle 3 on
    )
    assert reason == "max_cycles"
    assert "Architectures to try next: convnext_atto, regnetx_002." in ws.mentor_notes_tail(2000)
    first, second, third = _prompts(store, tmp_path)
    assert "convnext_atto, regnetx_002" not in first + second
    assert "Architectures to try next: convnext_atto, regnetx_002." in third


@pytest.mark.slow
def test_a_wait_watches_until_the_training_ends_and_the_prompt_counts_the_slots(tmp_path, store):
    reason, ws = run_loop(
        tmp_path,
        [decision(monitor_seconds=0), decision("wait", monitor_seconds=1)],
        "loop.max_cycles=2",
        "executor.max_concurrent=2",
        "executor.monitor_seconds_default=0",
    )
    assert reason == "max_cycles"
    assert _outcomes(ws) == ["launched", "finished"]  # not a 1 s tick: the wait saw the run end
    (train,) = store.runs("train")
    assert train.info.status == "FINISHED"
    first, second = _prompts(store, tmp_path)
    assert "Still training: nothing; 0 of 2 training slot(s) busy." in first
    assert "Still training: resnet18-lr2e-3; 1 of 2 training slot(s) busy." in second


@pytest.mark.slow
def test_the_planner_fills_the_second_slot_while_the_first_run_trains(tmp_path, store):
    args = ["llm=planner", "mentor.enabled=false", f"loop.workspace={tmp_path / '.llm_loop'}", FAST_TRAINING]
    args += ["loop.poll_seconds=0", "loop.max_cycles=2", "executor.max_concurrent=2"]
    args += ["executor.monitor_seconds_max=0"]  # cycle 1 does not watch its run to the end
    assert build_loop(compose_loop(args)).run() == "max_cycles"
    decisions = store.runs("decision")
    assert [d.data.params["action"] for d in decisions] == ["train", "train"]
    assert len(store.runs("train")) == 2
