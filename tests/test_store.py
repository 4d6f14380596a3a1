"""A new sqlite store under concurrency: independent processes that all may be first to create it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import TINY
from mlflow.tracking import MlflowClient

from agentexp import tracking

ONE_STEP = [*TINY, "trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
TRAINERS = 4
"""Started at once; before the store lock, 3 of 4 failed and left the store half-migrated."""
AT_ONCE = """
import pathlib, runpy, sys, time
import trainers.data, trainers.evaluation, trainers.model  # the imports (seconds) before the start line
print("ready", flush=True)
go = pathlib.Path(sys.argv.pop(1))
while not go.exists():
    time.sleep(0.01)
runpy.run_module("trainers.train", run_name="__main__", alter_sys=True)
"""
"""`python -m trainers.train ARGS` once a start file appears: the processes reach the store together."""


def start_trainer(uri: str, go: Path | None = None) -> subprocess.Popen:
    """A trainer process; with `go`, it imports, says `ready` and waits for that file to start training."""
    head = ["-c", AT_ONCE, str(go)] if go is not None else ["-m", "trainers.train"]
    return subprocess.Popen(
        [sys.executable, *head, *ONE_STEP],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {tracking.ENV_URI: uri},
    )


def finished(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def test_trainers_started_at_once_on_a_new_store_all_finish(tmp_path):
    db = tmp_path / "new" / "mlflow.db"
    uri = f"sqlite:///{db}"
    go = tmp_path / "go"
    procs = [start_trainer(uri, go) for _ in range(TRAINERS)]
    for proc in procs:
        assert proc.stdout.readline() == "ready\n", proc.communicate()[1][-3000:]
    go.touch()
    for proc in procs:
        finished(proc)
    finished(start_trainer(uri))  # the store stays usable afterwards
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"] * (TRAINERS + 1)
