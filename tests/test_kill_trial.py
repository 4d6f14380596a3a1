"""The kill trial: `agentexp loop` SIGKILLed at random moments, 20 times, over trainings of a few seconds.

Whatever the moment, each training belongs to exactly one committed `train` cycle, none is started twice,
and every one of them ends with a run_end event.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from helpers import decision, write_script

from agentexp.events import CycleEnd, Launch, Launched, RunEnd

FAKE_TRAINER = """
import json, random, sys, time
time.sleep(random.uniform(1.0, 3.0))
print("agentexp-summary: " + json.dumps({"best": random.random(), "run_id": None, "metric": "val_acc"}))
"""
KILLS = 20


@pytest.mark.slow
def test_random_kills_leave_one_training_per_committed_train_cycle(tmp_path, ws, monkeypatch):
    (tmp_path / "few_seconds_trainer.py").write_text(FAKE_TRAINER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path), prepend=os.pathsep)
    raws = []
    for i in range(400):
        raws.append(
            decision(run_label=f"probe-{i:03d}", overrides=[], monitor_seconds=2)
            if i % 2 == 0
            else decision("wait", monitor_seconds=1)
        )
    args = [
        "llm=scripted",
        f"llm.script={write_script(tmp_path / 'worker.jsonl', raws)}",
        "mentor.enabled=false",
        f"loop.workspace={ws.root}",
        "loop.poll_seconds=0",
        "executor.trainer_module=few_seconds_trainer",
        "executor.poll_interval_s=0.1",
        "loop.max_cycles=400",
    ]
    rng = random.Random(0)
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentexp", "loop", "-q", *args], stdout=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(3.0, 12.0))  # the first seconds are imports and the session start
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    last = subprocess.run(
        [sys.executable, "-m", "agentexp", "loop", "-q", *args[:-1], "loop.max_cycles=2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert last.returncode == 0, last.stderr

    events = ws.events()
    launched = [e for e in events if isinstance(e, Launched) and e.run.attempt == 1]
    intents = [e for e in events if isinstance(e, Launch) and e.run.attempt == 1]
    train_cycles = [e.cycle for e in events if isinstance(e, CycleEnd) and e.summary.action == "train"]
    ends = Counter(str(e.run_dir) for e in events if isinstance(e, RunEnd))
    assert launched, "no training was launched: the trial tested nothing"
    print(f"kill trial: {KILLS} kills, {len(launched)} trainings, {len(train_cycles)} committed train cycles")
    assert sorted(e.cycle for e in launched) == sorted(train_cycles)  # one training per committed train cycle
    assert len({e.cycle for e in intents}) == len(intents)  # no cycle decided (and launched) twice
    assert all(ends[str(e.run.run_dir)] == 1 for e in launched)  # each ended exactly once
    assert len(set(Counter(e.cycle for e in events if isinstance(e, CycleEnd)).values())) == 1  # one end each
