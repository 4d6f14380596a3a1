"""A real one-node SLURM (tests/slurm/cluster.sh): submitit jobs run, are cancelled, time out; sweeps."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable

import cloudpickle
import pytest
import submitit
from submitit.core.utils import UncompletedJobError

pytestmark = pytest.mark.slurm
# The jobs' functions travel by value: this test module is not importable on the node.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

TINY = ["debug=fast", "data.image_size=16"]


@pytest.fixture
def executor(tmp_path, partition) -> submitit.AutoExecutor:
    found = submitit.AutoExecutor(folder=tmp_path / "jobs" / "%j", cluster="slurm")
    found.update_parameters(slurm_partition=partition, timeout_min=5, cpus_per_task=1)
    return found


def settle(job: submitit.Job, until: Callable[[str], bool], seconds: float) -> str:
    """Poll sacct (forced: submitit's own cache may wait minutes) until the job's state satisfies `until`."""
    deadline = time.monotonic() + seconds
    while True:
        state = job.watcher.get_state(job.job_id, mode="force")
        if until(state) or time.monotonic() > deadline:
            return state
        time.sleep(1)


def hello() -> str:
    print("hello from job", os.environ["SLURM_JOB_ID"])
    return os.environ["SLURM_JOB_ID"]


def nap() -> None:
    time.sleep(600)


def nap_past_the_warning() -> None:
    """Sleep on after submitit's time-limit warning until SLURM kills the job.

    submitit asks SLURM for USR2 shortly before the limit (at once for a 1-minute job) and raises
    UncompletedJobError in a plain function, which would end the job FAILED before its limit.
    """
    end = time.monotonic() + 600
    while time.monotonic() < end:
        with contextlib.suppress(UncompletedJobError):
            time.sleep(end - time.monotonic())


def test_a_job_runs_on_the_cluster_and_returns_its_result_and_log(executor):
    job = executor.submit(hello)
    assert settle(job, lambda s: s == "COMPLETED", 60) == "COMPLETED"
    assert job.result() == job.job_id
    assert f"hello from job {job.job_id}" in job.stdout()


def test_scancel_of_a_running_job_shows_as_cancelled(executor):
    job = executor.submit(nap)
    assert settle(job, lambda s: s == "RUNNING", 60) == "RUNNING"
    subprocess.run(["scancel", job.job_id], check=True)
    state = settle(job, lambda s: s.startswith("CANCELLED"), 60)
    assert state.startswith("CANCELLED")  # e.g. "CANCELLED by 0": sacct names who cancelled
    assert job.done()
    with pytest.raises(UncompletedJobError, match="CANCELLED"):
        job.result()


@pytest.mark.slow
def test_a_job_over_its_time_limit_ends_timeout(executor):
    executor.update_parameters(timeout_min=1)  # SLURM's smallest limit; its timer checks about every 30 s
    job = executor.submit(nap_past_the_warning)
    assert settle(job, lambda s: s not in ("PENDING", "RUNNING", "UNKNOWN"), 180) == "TIMEOUT"
    assert "DUE TO TIME LIMIT" in job.stderr()


@pytest.mark.slow
def test_a_hydra_multirun_sweep_runs_as_slurm_jobs_into_one_store(partition, tmp_path, store):
    argv = [sys.executable, "-m", "trainers.train", "-m", "hydra/launcher=submitit_slurm"]
    argv += [f"hydra.launcher.partition={partition}", "hydra.launcher.timeout_min=10"]
    argv += ["hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    done = subprocess.run([*argv, *TINY, "optim.lr=1e-3,3e-4"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    runs = store.runs("train")
    assert sorted(r.data.params["optim.lr"] for r in runs) == ["0.0003", "0.001"]
    assert all(r.info.status == "FINISHED" for r in runs)
    logs = sorted((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2  # one SLURM job each
