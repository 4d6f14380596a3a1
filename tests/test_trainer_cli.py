"""The trainer as users run it: `python -m trainers.train` in a real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from helpers import TINY

from agentexp import tracking


def trainer(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "trainers.train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
        **kwargs,
    )


def test_multirun_makes_one_run_per_job(store):
    proc = trainer("-m", *TINY, "model=resnet18,mobilenetv3_small_100", "trainer.epochs=1")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    runs = store.runs("train")
    assert sorted(r.data.params["model.name"] for r in runs) == ["mobilenetv3_small_100", "resnet18"]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert out.count("agentexp-summary: ") == 2
    assert len({r.data.tags[tracking.RUN_DIR] for r in runs}) == 2


def test_sigterm_ends_run_killed_promptly(store):
    proc = trainer(*TINY, "trainer.epochs=500")
    run = None
    deadline = time.monotonic() + 120
    while run is None and time.monotonic() < deadline:
        time.sleep(0.5)
        run = next(iter(store.runs("train")), None)
    assert run is not None, "the trainer never started its MLflow run"
    time.sleep(1.0)  # inside the training loop by now
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 15
    assert proc.returncode == 128 + signal.SIGTERM
    assert "the run ended KILLED" in err
    assert store.client.get_run(run.info.run_id).info.status == "KILLED"


def test_user_error_is_one_line_without_traceback(tmp_path):
    proc = trainer("data=imagefolder", f"data.root={tmp_path / 'missing'}")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert (
        err.strip().splitlines()[-1]
        == f"Error: data.root {tmp_path / 'missing'} does not exist or is not a folder"
    )


def test_bad_override_gets_hydras_message(store):
    proc = trainer("optim.lrr=0.1")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert "Could not override 'optim.lrr'" in err
    assert store.runs() == []
