"""The reaper across machines: it ends only runs of its own host whose process is gone, or whose SLURM job
SLURM says has ended; a shared store's other runs stay as they are."""

from __future__ import annotations

import socket
import subprocess

from agentexp import tracking
from agentexp.launchers.local import alive


def dead_pid() -> int:
    """The pid of a process that has exited (and been waited for)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def running_run(tracker: tracking.Tracker, name: str, **tags: str) -> str:
    run = tracker.client.create_run(
        tracker.experiment_id, run_name=name, tags={tracking.KIND: "train", **tags}
    )
    return run.info.run_id


def test_only_own_dead_processes_and_ended_jobs_are_reaped(store):
    tracker = tracking.Tracker(store.uri, "test")
    here, gone = socket.gethostname(), str(dead_pid())
    runs = {
        "other-host-dead-pid": running_run(tracker, "a", **{tracking.HOST: "node-17", tracking.PID: gone}),
        "own-host-dead-pid": running_run(tracker, "b", **{tracking.HOST: here, tracking.PID: gone}),
        "own-host-live-pid": running_run(tracker, "c", **{tracking.HOST: here, tracking.PID: "1"}),
        "no-host": running_run(tracker, "d", **{tracking.PID: gone}),
        "job-ended": running_run(tracker, "e", **{tracking.HOST: "node-3", tracking.SLURM_JOB: "41"}),
        "job-running": running_run(tracker, "f", **{tracking.HOST: here, tracking.SLURM_JOB: "42"}),
        "job-unknown": running_run(
            tracker, "g", **{tracking.HOST: here, tracking.PID: gone, tracking.SLURM_JOB: "43"}
        ),
    }
    sacct = {"41": True, "42": False, "43": None}  # 43: no sacct answers for it
    reaped = tracker.reap(alive, sacct.get)
    assert sorted(reaped) == sorted([runs["own-host-dead-pid"], runs["job-ended"]])
    status = {name: tracker.client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {
        "other-host-dead-pid": "RUNNING",
        "own-host-dead-pid": "KILLED",
        "own-host-live-pid": "RUNNING",
        "no-host": "RUNNING",
        "job-ended": "KILLED",
        "job-running": "RUNNING",
        "job-unknown": "RUNNING",  # a job's pid says nothing: only SLURM can tell
    }
