"""SLURM launcher: each training is one sbatch job submitted through submitit; sacct says how it stands."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Literal

import submitit
from pydantic import BaseModel, ConfigDict, Field
from submitit.core.utils import FailedJobError, UncompletedJobError

from agentexp.launchers.base import ActiveRun, Handle, LauncherError, LaunchSpec, RunOutcome, judge
from agentexp.launchers.sandbox import wrap

log = logging.getLogger(__name__)

WAITING = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "UNKNOWN")
"""sacct states of a job that has not ended (UNKNOWN: sacct does not know it yet)."""
KILLED_STATES = ("CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE", "NODE_FAIL")
"""Ended states of a job SLURM (or a user) stopped: its run ends KILLED."""
CANCEL_WAIT_S = 15.0
"""How long terminate waits past the grace for SLURM to report a cancelled job ended."""
FROM_NODE = ("SLURM_", "CUDA_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")
"""What a job's own environment adds to the training's: SLURM's job facts and the GPUs it bound."""


class SlurmConfig(BaseModel):
    """`launcher=slurm` (conf/launcher/slurm.yaml): where and with what each training's job runs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: Literal["slurm"] = "slurm"
    partition: str | None = None
    """None = the cluster's default partition."""
    gpus_per_job: int = Field(0, ge=0)
    """GPUs each training's job asks for (SLURM binds them: CUDA_VISIBLE_DEVICES)."""
    cpus_per_job: int = Field(1, ge=1)
    """CPUs each job asks for; also the training's threads (OMP_NUM_THREADS)."""
    mem_gb: float | None = Field(None, gt=0)
    """Memory per job; None = the partition's default."""
    time_limit_min: int = Field(60, ge=1)
    """SLURM ends a job past this (its run ends KILLED)."""
    extra: dict[str, str | int] = {}
    """More sbatch options without the dashes, e.g. {account: team, qos: high}."""
    poll_s: float = Field(2.0, gt=0)
    """Least seconds between two sacct reads of a job."""


def run_job(argv: list[str], env: dict[str, str], log_path: str, cwd: str) -> int:
    """On the node: the trainer with its output appended to the run's log; returns its exit code.

    SLURM's SIGTERM (scancel, the time limit) reaches the trainer too, which ends its run KILLED; the
    warning submitit raises here before the time limit is ignored so the trainer gets to do that."""
    env = env | {k: v for k, v in os.environ.items() if k.startswith(FROM_NODE)}
    # SLURM sends submitit's warning (SIGUSR2) to every process of the job: its default action would kill the
    # trainer, so the trainer inherits it ignored; SIGTERM at the limit then ends its run KILLED.
    warning = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        with open(log_path, "ab") as sink:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=cwd
            )
    finally:
        signal.signal(signal.SIGUSR2, warning)
    while True:
        try:
            return proc.wait()
        except UncompletedJobError:
            continue


def job_ended(job_id: str) -> bool | None:
    """Whether SLURM says the job has ended; None when no sacct answers (the reaper then leaves it)."""
    if shutil.which("sacct") is None:
        return None
    done = _ask(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"])
    states = done.stdout.split() if done else []
    if done is None or done.returncode != 0 or not states:
        return None
    return not states[0].startswith(WAITING)


class SlurmLauncher:
    """Submits each training as one job; polls sacct, reads the job's log, cancels with scancel."""

    def __init__(self, cfg: SlurmConfig, folder: Path, stop_grace_s: float) -> None:
        if shutil.which("sbatch") is None:
            raise LauncherError(
                "launcher=slurm needs SLURM's sbatch on PATH and none is there: run the loop on a machine "
                "that submits to the cluster, or use launcher=local"
            )
        self.cfg, self.folder, self.stop_grace_s = cfg, folder / "%j", stop_grace_s
        self.executor = submitit.AutoExecutor(folder=self.folder, cluster="slurm")
        params = {
            "timeout_min": cfg.time_limit_min,
            "cpus_per_task": cfg.cpus_per_job,
            "gpus_per_node": cfg.gpus_per_job or None,
            "mem_gb": cfg.mem_gb,
            "slurm_partition": cfg.partition,
            "slurm_additional_parameters": dict(cfg.extra) or None,
        }
        self.executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        self._jobs: dict[str, submitit.Job] = {}
        self._read: dict[str, tuple[float, str]] = {}  # job id -> (when, sacct state)
        self._stopped: set[str] = set()
        self._outcomes: dict[str, RunOutcome] = {}

    def start(self, spec: LaunchSpec) -> Handle:
        """Submit the trainer as a job named after the run's folder (how find() knows it again)."""
        argv, env = wrap(spec.argv, spec.env, spec.sandbox) if spec.sandbox else (spec.argv, spec.env)
        self.executor.update_parameters(name=spec.run_dir.name)
        try:
            job = self.executor.submit(run_job, argv, env, str(spec.log_path), os.getcwd())
        except (FailedJobError, subprocess.CalledProcessError, OSError) as err:
            raise LauncherError(f"sbatch did not take the job: {str(err).strip()[-300:]}") from err
        self._jobs[job.job_id] = job
        log.debug("submitted %s as SLURM job %s", spec.run_label, job.job_id)
        return Handle(pid=0, started_at=time.time(), job_id=job.job_id)

    def find(self, spec: LaunchSpec) -> Handle | None:
        """The queued or running job submitted for `spec` (named after its run folder)."""
        done = _ask(["squeue", "-h", "-o", "%i", "-n", spec.run_dir.name])
        ids = done.stdout.split() if done else []
        return Handle(pid=0, started_at=time.time(), job_id=ids[0]) if ids else None

    def running(self, run: ActiveRun) -> bool:
        return self._state(_job_id(run)).startswith(WAITING)

    def poll(self, run: ActiveRun) -> RunOutcome | None:
        """None while the job is queued or running, else how it ended (its state decides KILLED)."""
        job_id = _job_id(run)
        if job_id in self._outcomes:
            return self._outcomes[job_id]
        state = self._state(job_id)
        if state.startswith(WAITING):
            return None
        returncode = self._returncode(job_id) if state == "COMPLETED" else None
        if state != "COMPLETED":
            self._append_job_log(run, state)
        stopped = job_id in self._stopped or state.startswith(KILLED_STATES)
        outcome = judge(run, returncode, stopped=stopped)
        self._outcomes[job_id] = outcome
        log.debug("%s (job %s) ended %s: %s", run.run_label, job_id, outcome.status, state)
        return outcome

    def terminate(self, run: ActiveRun) -> RunOutcome:
        """scancel the job (SLURM: SIGTERM, SIGKILL after its KillWait); killed unless it had finished."""
        if (outcome := self.poll(run)) is not None:
            return outcome
        job_id = _job_id(run)
        self._stopped.add(job_id)
        self._job(job_id).cancel(check=False)
        deadline = time.monotonic() + self.stop_grace_s + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            self._read.pop(job_id, None)
            if (outcome := self.poll(run)) is not None:
                return outcome
            time.sleep(0.5)
        log.warning("%s (job %s) not reported ended %gs after scancel", run.run_label, job_id, CANCEL_WAIT_S)
        return judge(run, None, stopped=True)

    def _job(self, job_id: str) -> submitit.Job:
        if job_id not in self._jobs:  # a job an earlier loop process submitted
            self._jobs[job_id] = submitit.SlurmJob(folder=self.folder, job_id=job_id)
        return self._jobs[job_id]

    def _state(self, job_id: str) -> str:
        """The job's sacct state, read at most every poll_s seconds."""
        when, state = self._read.get(job_id, (0.0, "UNKNOWN"))
        if time.monotonic() - when >= self.cfg.poll_s:
            state = self._job(job_id).watcher.get_state(job_id, mode="force")
            self._read[job_id] = (time.monotonic(), state)
        return state

    def _returncode(self, job_id: str) -> int | None:
        try:
            return self._job(job_id).result()
        except (UncompletedJobError, FailedJobError, OSError):
            return None

    def _append_job_log(self, run: ActiveRun, state: str) -> None:
        """SLURM's and submitit's own words on a job that did not complete, into the run's log."""
        job = self._job(_job_id(run))
        words = (job.stderr() or "").strip().splitlines()[-20:]
        with run.log_path.open("a", encoding="utf-8") as sink:
            sink.write(f"SLURM job {job.job_id} ended {state}\n" + "".join(f"{line}\n" for line in words))


def _job_id(run: ActiveRun) -> str:
    if run.handle.job_id is None:
        raise LauncherError(f"{run.run_label} has no SLURM job id: it was not started by launcher=slurm")
    return run.handle.job_id


def _ask(argv: list[str]) -> subprocess.CompletedProcess | None:
    """A SLURM query's answer; None when the command cannot start or hangs (15 s)."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
