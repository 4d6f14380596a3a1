"""GPU slots reach the decision: the prompt, `gpu.*` metrics on the decision run, and `agentexp status`
(NVML readings injected where gpu.py hands them over)."""

from __future__ import annotations

import os
import time

import mlflow
import psutil
from helpers import decision, scripted_loop

from agentexp import status
from agentexp.events import Launched, RunEnd


def fake_nvml() -> list[dict]:
    """What gpu.gpu_utilization reads on a box with two 80 GiB GPUs, one busy and nearly full."""
    return [
        {"index": 0, "util_pct": 97.0, "mem_used_gib": 76.0, "mem_total_gib": 80.0},
        {"index": 1, "util_pct": 0.0, "mem_used_gib": 0.5, "mem_total_gib": 80.0},
    ]


def prompt_of(run) -> str:
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="prompt.md")
    with open(path, encoding="utf-8") as text:
        return text.read()


def test_gpu_slots_reach_the_prompt_and_the_decision_runs(tmp_path, store, monkeypatch):
    (tmp_path / "napping_trainer.py").write_text("import time\ntime.sleep(3)\n")  # outlives cycle 1's watch
    monkeypatch.setenv("PYTHONPATH", str(tmp_path), prepend=os.pathsep)
    slots = ("executor.gpus=[0,1]", "executor.max_concurrent=2", "loop.max_cycles=2")
    slots += ("executor.trainer_module=napping_trainer",)
    loop = scripted_loop(tmp_path, [decision(monitor_seconds=1), decision("analyze")], *slots)
    loop.read_gpus = fake_nvml
    assert loop.run() == "max_cycles"
    first, second = store.runs("decision")
    assert {k: v for k, v in first.data.metrics.items() if k.startswith("gpu.")} == {
        "gpu.0.busy": 0.0,
        "gpu.0.util_pct": 97.0,
        "gpu.0.mem_used_gib": 76.0,
        "gpu.0.mem_total_gib": 80.0,
        "gpu.1.busy": 0.0,
        "gpu.1.util_pct": 0.0,
        "gpu.1.mem_used_gib": 0.5,
        "gpu.1.mem_total_gib": 80.0,
    }
    assert "- GPU 1: idle slot, 0% busy, 0.5 of 80.0 GiB" in prompt_of(first)
    # cycle 2 sees the training cycle 1 put on GPU 0
    assert (second.data.metrics["gpu.0.busy"], second.data.metrics["gpu.1.busy"]) == (1.0, 0.0)
    assert "- GPU 0: resnet18-lr2e-3, 97% busy, 76.0 of 80.0 GiB" in prompt_of(second)


def test_no_gpu_no_gpu_lines(tmp_path, store):
    loop = scripted_loop(tmp_path, [decision("analyze")], "executor.gpus=[]", "loop.max_cycles=1")
    loop.read_gpus = fake_nvml  # readings of GPUs the slots do not use are not shown
    loop.run()
    (only,) = store.runs("decision")
    assert not [k for k in only.data.metrics if k.startswith("gpu.")]
    assert "- GPU " not in prompt_of(only)


def test_status_shows_each_gpu_and_the_run_its_slot_holds(ws):
    me = {"run_label": "wide-lr", "pid": os.getpid(), "cycle": 3, "gpu": 0}
    me["started_at"] = psutil.Process().create_time()
    ws.heartbeat(status="monitoring", cycle=3, active_runs=[me])
    text = " ".join(str(part) for part in status.render(ws, read_gpus=fake_nvml).renderables)
    assert "GPU: 0: 97% 76.0/80.0 GiB (wide-lr), 1: 0% 0.5/80.0 GiB" in text
    assert "GPU: none" in " ".join(str(p) for p in status.render(ws, read_gpus=list).renderables)


def test_a_launch_that_leaves_a_slot_free_does_not_wait_before_filling_it(tmp_path, store, monkeypatch):
    (tmp_path / "napping_trainer.py").write_text("import time\ntime.sleep(4)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path), prepend=os.pathsep)
    raws = [
        decision(run_label="first", monitor_seconds=600),
        decision(run_label="second", monitor_seconds=600),
    ]
    loop = scripted_loop(
        tmp_path, raws, "executor.max_concurrent=2", "executor.trainer_module=napping_trainer"
    )
    began = time.monotonic()
    assert loop.run() == "script_exhausted"
    assert time.monotonic() - began < 60  # neither cycle sat out its 600 s watch
    launched = [e for e in loop.ws.events() if isinstance(e, Launched)]
    ended = [e for e in loop.ws.events() if isinstance(e, RunEnd)]
    assert [e.run.run_label for e in launched] == ["first", "second"]
    assert launched[1].ts < min(e.ts for e in ended)  # both ran at once
