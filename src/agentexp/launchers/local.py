"""Local launcher: each training is a subprocess in its own process group on this machine."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from typing import Literal

import psutil
from pydantic import BaseModel, ConfigDict

from agentexp.launchers.base import ActiveRun, Handle, LauncherError, LaunchSpec, RunOutcome, judge
from agentexp.launchers.sandbox import wrap

log = logging.getLogger(__name__)

KILL_WAIT_S = 10.0
"""How long terminate waits for the process to vanish after SIGKILL."""
START_TOLERANCE_S = 2.0
"""A live pid whose start time differs more than this from the run's is a reused pid, not the run."""

Key = tuple[int, float]


class LocalConfig(BaseModel):
    """`launcher=local` (conf/launcher/local.yaml): trainings as subprocesses on this machine."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["local"] = "local"


class LocalLauncher:
    """Starts trainers as subprocesses; also watches runs an earlier loop process started (by pid)."""

    def __init__(self, stop_grace_s: float) -> None:
        self.stop_grace_s = stop_grace_s
        # keyed by (pid, started_at): a pid alone may name an older run's recycled process
        self._children: dict[Key, subprocess.Popen] = {}
        self._stopped: set[Key] = set()
        self._outcomes: dict[Key, RunOutcome] = {}

    def start(self, spec: LaunchSpec) -> Handle:
        """Start the trainer in its own session, its output appended to the run's log."""
        argv, env = wrap(spec.argv, spec.env, spec.sandbox) if spec.sandbox else (spec.argv, spec.env)
        with spec.log_path.open("ab") as sink:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # own process group: survives a loop kill, stoppable as a group
                )
            except OSError as err:
                raise LauncherError(
                    f"could not start the trainer with {spec.argv[0]}: {err.strerror}"
                ) from err
        handle = Handle(pid=proc.pid, started_at=_create_time(proc.pid) or time.time())
        self._children[_key(handle)] = proc
        return handle

    def find(self, spec: LaunchSpec) -> Handle | None:
        """The live process group leader started for `spec` (its command line names the run's folder)."""
        needle = str(spec.run_dir)
        for proc in psutil.process_iter(["cmdline", "create_time"]):
            try:
                if (
                    any(needle in arg for arg in proc.info["cmdline"] or [])
                    and os.getpgid(proc.pid) == proc.pid
                ):
                    return Handle(pid=proc.pid, started_at=proc.info["create_time"])
            except (psutil.Error, ProcessLookupError):
                continue
        return None

    def running(self, run: ActiveRun) -> bool:
        child = self._children.get(_key(run.handle))
        if child is not None:
            return child.poll() is None
        started = _create_time(run.pid)
        same = started is not None and abs(started - run.started_at) <= START_TOLERANCE_S
        return same and alive(run.pid)

    def poll(self, run: ActiveRun) -> RunOutcome | None:
        """None while the run's process is alive, else how it ended."""
        key = _key(run.handle)
        if key in self._outcomes:
            return self._outcomes[key]
        child = self._children.get(key)
        if child is not None:
            returncode = child.poll()
            if returncode is None:
                return None
            del self._children[key]
        elif self.running(run):
            return None
        else:
            returncode = None
        outcome = judge(run, returncode, stopped=key in self._stopped)
        self._outcomes[key] = outcome
        self._stopped.discard(key)
        log.debug("%s ended %s (returncode %s)", run.run_label, outcome.status, returncode)
        return outcome

    def terminate(self, run: ActiveRun) -> RunOutcome:
        """SIGTERM to the run's process group, SIGKILL after the grace; killed unless it had finished."""
        if (outcome := self.poll(run)) is not None:
            return outcome
        self._stopped.add(_key(run.handle))
        _signal_group(run.pid, signal.SIGTERM)
        self._wait_gone(run, self.stop_grace_s)
        _signal_group(run.pid, signal.SIGKILL)  # the leader is gone or late; leave no straggler behind
        self._wait_gone(run, KILL_WAIT_S, group=True)
        outcome = self.poll(run)
        if outcome is None:  # unkillable for now (e.g. stuck in the kernel): report it stopped anyway
            log.warning("%s (pid %d) survived SIGKILL for %gs", run.run_label, run.pid, KILL_WAIT_S)
            outcome = judge(run, None, stopped=True)
        return outcome

    def _wait_gone(self, run: ActiveRun, seconds: float, group: bool = False) -> None:
        deadline = time.monotonic() + seconds
        while (self.running(run) or (group and _group_alive(run.pid))) and time.monotonic() < deadline:
            time.sleep(0.05)


def alive(pid: int) -> bool:
    """True when a process with this pid exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _key(handle: Handle) -> Key:
    return handle.pid, handle.started_at


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _signal_group(pid: int, signum: int) -> None:
    # start_new_session made the trainer a group leader: its pgid is its pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process belongs to process group `pgid`."""
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, PermissionError):
            continue
    return False
