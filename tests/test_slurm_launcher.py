"""launcher=slurm: the loop's trainings as SLURM jobs (tests marked slurm run against tests/slurm/cluster.sh);
without sbatch, one sentence and nothing submitted."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest
from helpers import decision, scripted_loop, wait_for
from typer.testing import CliRunner

from agentexp import tracking
from agentexp.cli import app
from agentexp.events import Launched, RunEnd

# Decides by its label: `nap-*` sleeps (a long training), anything else prints a summary at once.
FAKE_TRAINER = """
import json, sys, time
label = next(a for a in sys.argv if a.startswith("run_label=")).split("=", 1)[1].strip("'")
print("training", label, flush=True)
if label.startswith("nap"):
    time.sleep(600)
print("agentexp-summary: " + json.dumps({"best": 0.5, "metric": "val_acc"}), flush=True)
"""


def test_without_sbatch_the_loop_says_so_in_one_sentence_and_submits_nothing(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    args = ["loop", "launcher=slurm", f"loop.workspace={tmp_path / 'ws'}", "loop.max_cycles=1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: launcher=slurm needs SLURM's sbatch on PATH and none is there: run the loop on a machine "
        "that submits to the cluster, or use launcher=local"
    ]
    assert not (tmp_path / "ws" / "slurm").exists()
    assert not (tmp_path / "ws" / "logs" / "events.jsonl").exists()


def slurm_loop(tmp_path, where, raws, *extra):
    on = ["launcher=slurm", f"launcher.partition={where}", "launcher.cpus_per_job=1", "launcher.poll_s=1"]
    return scripted_loop(tmp_path, raws, *on, "executor.stop_grace_s=5", *extra)


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch) -> str:
    """A trainer module the jobs import (PYTHONPATH travels in the job's environment)."""
    (tmp_path / "fakes").mkdir()
    (tmp_path / "fakes" / "slurm_fake_trainer.py").write_text(FAKE_TRAINER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fakes"), prepend=os.pathsep)
    return "executor.trainer_module=slurm_fake_trainer"


def sacct_state(job_id: str) -> str:
    done = subprocess.run(
        ["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"], capture_output=True, text=True
    )
    return done.stdout.strip()


def job_ids(ws) -> list[str]:
    return [e.run.handle.job_id for e in ws.events() if isinstance(e, Launched)]


def ends(ws) -> dict[str, str]:
    return {e.run.run_label: e.run.status for e in ws.events() if isinstance(e, RunEnd)}


def in_background(loop) -> threading.Thread:
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    return thread


@pytest.mark.slurm
def test_two_trainings_run_as_two_jobs_into_the_store(tmp_path, store, partition):
    raws = [
        decision(run_label="lr-a", overrides=["optim.lr=0.001"], monitor_seconds=1),
        decision(run_label="lr-b", overrides=["optim.lr=0.002"], monitor_seconds=1),
        decision("wait", monitor_seconds=1),
    ]
    loop = slurm_loop(tmp_path, partition, raws, "executor.max_concurrent=2", "loop.max_cycles=3")
    assert loop.run() == "max_cycles"
    first, second = job_ids(loop.ws)
    assert first != second
    assert ends(loop.ws) == {"lr-a": "finished", "lr-b": "finished"}
    runs = store.runs("train")
    assert sorted(r.data.tags[tracking.SLURM_JOB] for r in runs) == sorted([first, second])
    assert all(r.info.status == "FINISHED" for r in runs)
    assert (sacct_state(first), sacct_state(second)) == ("COMPLETED", "COMPLETED")


@pytest.mark.slurm
def test_a_stop_cancels_the_running_job(tmp_path, partition, fake_trainer):
    raws = [decision(run_label="nap-long", monitor_seconds=600)] + [decision("wait")] * 3
    loop = slurm_loop(tmp_path, partition, raws, fake_trainer, "loop.max_cycles=4")
    thread = in_background(loop)
    wait_for(lambda: job_ids(loop.ws), 30, "the job's submission")
    (job,) = job_ids(loop.ws)
    wait_for(lambda: "training nap-long" in (loop.ws.logs / "nap-long.log").read_text(), 60, "the job to run")
    loop.ws.request_stop()
    thread.join(60)
    assert not thread.is_alive()
    assert ends(loop.ws) == {"nap-long": "killed"}
    assert sacct_state(job).startswith("CANCELLED")


@pytest.mark.slurm
def test_a_job_scancelled_from_outside_ends_killed_and_its_run_too(tmp_path, store, partition):
    long = "loop.train_overrides=['trainer.epochs=500','debug=fast','data.image_size=16']"
    raws = [decision(run_label="long", monitor_seconds=600), decision("wait", monitor_seconds=1)]
    loop = slurm_loop(tmp_path, partition, raws, long, "loop.max_cycles=2")
    thread = in_background(loop)
    run = wait_for(lambda: store.runs("train"), 300, "the training's MLflow run")[0]
    job = run.data.tags[tracking.SLURM_JOB]
    subprocess.run(["scancel", job], check=True)
    thread.join(120)
    assert not thread.is_alive()
    assert ends(loop.ws) == {"long": "killed"}
    assert store.client.get_run(run.info.run_id).info.status == "KILLED"
    assert sacct_state(job).startswith("CANCELLED")


@pytest.mark.slurm
def test_a_job_past_its_time_limit_ends_killed_and_the_loop_goes_on(tmp_path, partition, fake_trainer):
    raws = [decision(run_label="nap-forever", monitor_seconds=600), decision(run_label="quick")]
    loop = slurm_loop(
        tmp_path, partition, raws, fake_trainer, "launcher.time_limit_min=1", "loop.max_cycles=2"
    )
    began = time.monotonic()
    assert loop.run() == "max_cycles"
    assert time.monotonic() - began >= 55  # SLURM's smallest limit is a minute
    nap, quick = job_ids(loop.ws)
    assert ends(loop.ws) == {"nap-forever": "killed", "quick": "finished"}
    assert sacct_state(nap) == "TIMEOUT" and sacct_state(quick) == "COMPLETED"
    log = (loop.ws.logs / "nap-forever.log").read_text()
    assert f"SLURM job {nap} ended TIMEOUT" in log  # the job's own log, read into the run's
    assert json.loads(log.splitlines()[0].split(" ", 1)[1])["cycle"] == 1


def test_agents_cannot_pick_a_hydra_launcher_only_the_users_sweeps_can(tmp_path):
    from agentexp import gate
    from agentexp.config import compose_loop
    from agentexp.decisions import WorkerDecision

    cfg = compose_loop([])
    for override in ("hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug"):
        why = "sweep it on the cluster, all at once"
        d = WorkerDecision(
            action="train",
            rationale=why,
            run_label="sweep",
            overrides=[override],
            strategy_dimension="optimization",
        )
        assert gate.check(d, cfg.gate).violations == [
            f"Override '{override}' touches hydra.*, which only the user may change."
        ]
