"""Launch, watch and stop training processes: the only module that starts processes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field

from agentexp import tracking
from agentexp.workspace import ActiveRun, Workspace

log = logging.getLogger(__name__)

SUMMARY_PREFIX = "agentexp-summary:"
"""The trainer's last line on success: this prefix, then the summary as JSON."""
LAUNCH_PREFIX = "agentexp-launch:"
"""The executor's line opening each launch in a log, so a reused label never reads an older run."""
KILLED_MARKER = "the run ended KILLED"
"""What the trainer prints when SIGTERM, SIGINT or its timeout stopped it."""
KILLED_CODES = frozenset({124, 130, 143, -signal.SIGTERM, -signal.SIGINT})
"""Exit codes of a stopped trainer: timeout, SIGINT, SIGTERM (handled or not)."""
TAIL_LINES = 40
TAIL_CHARS = 8000
KILL_WAIT_S = 10.0
"""How long terminate waits for the process to vanish after SIGKILL."""
START_TOLERANCE_S = 2.0
"""A live pid whose start time differs more than this from the run's is a reused pid, not the run."""


class ExecutorError(Exception):
    """A training could not be started, stated in one sentence."""


class ExecutorConfig(BaseModel):
    """The `executor:` section of conf/loop.yaml."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    python_exe: str | None = None
    """Interpreter that runs the trainer; None = the loop's own (sys.executable)."""
    trainer_module: str = "trainers.train"
    """Module run with `python -m`."""
    max_concurrent: int = Field(1, ge=1)
    """Most trainings running at once."""
    monitor_seconds_default: int = Field(20, ge=0)
    """Seconds to watch when a decision says 0 while runs are active."""
    monitor_seconds_max: int = Field(600, ge=0)
    """Decisions asking to watch longer are cut to this."""
    poll_interval_s: float = Field(1.0, gt=0)
    """Seconds between two looks at the running trainings."""
    stop_grace_s: float = Field(30.0, ge=0)
    """Seconds between SIGTERM and SIGKILL when stopping a training."""


class RunOutcome(BaseModel):
    """How a training ended, judged from its exit code and its log."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    run_label: str
    """The run's label."""
    status: Literal["finished", "failed", "killed"]
    """finished: the trainer printed its summary; killed: stopped by a signal or timeout; else failed."""
    returncode: int | None
    """Exit code; None when another loop process started it and nobody here saw it exit."""
    metric: float | None = None
    """The summary's best value of the tracked metric."""
    mlflow_run_id: str | None = None
    """MLflow run id of the training, from the summary when it finished."""
    summary: dict[str, Any] | None = None
    """The parsed `agentexp-summary: {...}` line."""
    error_tail: str = ""
    """Last lines of the log when the run did not finish (data for the agents, never instructions)."""


class Executor:
    """Local subprocess launcher; works on runs started by an earlier loop process too."""

    def __init__(self, workspace: Workspace, cfg: ExecutorConfig, tracking_uri: str, experiment: str) -> None:
        self.workspace = workspace
        self.cfg = cfg
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        # keyed by (pid, started_at): a pid alone may name an older run's recycled process
        self._children: dict[tuple[int, float], subprocess.Popen] = {}
        self._terminated: set[tuple[int, float]] = set()
        self._outcomes: dict[tuple[int, float], RunOutcome] = {}

    # launching -----------------------------------------------------------------------------------

    def launch(
        self,
        run_label: str,
        overrides: list[str],
        cycle: int,
        cycle_trace_id: str,
        parent_run_id: str | None,
        attempt: int = 1,
    ) -> ActiveRun:
        """Start the trainer in its own session, its output appended to the run's log."""
        log_path = self.workspace.create().log_path(run_label)
        argv = self.argv(run_label, overrides, cycle_trace_id)
        env = self._env(cycle_trace_id, parent_run_id)
        with log_path.open("ab") as sink:
            header = {"cycle": cycle, "cycle_trace_id": cycle_trace_id, "attempt": attempt, "argv": argv}
            sink.write(f"{LAUNCH_PREFIX} {json.dumps(header)}\n".encode())
            sink.flush()
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
                raise ExecutorError(f"could not start the trainer with {argv[0]}: {err.strerror}") from err
        started = _create_time(proc.pid) or time.time()
        self._children[(proc.pid, started)] = proc
        log.info("launched %s (pid %d, cycle %d)", run_label, proc.pid, cycle)
        return ActiveRun(
            pid=proc.pid,
            run_label=run_label,
            log_path=log_path,
            cycle=cycle,
            cycle_trace_id=cycle_trace_id,
            started_at=started,
            monitor_until=started,
            attempt=attempt,
            overrides=list(overrides),
            parent_run_id=parent_run_id,
        )

    def argv(self, run_label: str, overrides: list[str], cycle_trace_id: str) -> list[str]:
        """The trainer's command line: interpreter, module, overrides, label and a unique run dir."""
        run_dir = self.workspace.root.resolve() / "runs" / f"{run_label}-{cycle_trace_id}"
        return [
            self.cfg.python_exe or sys.executable,
            "-m",
            self.cfg.trainer_module,
            *overrides,
            f"run_label={_quote(run_label)}",  # quoted: a label like 1e5 or true stays a string
            f"hydra.run.dir={_quote(str(run_dir))}",
        ]

    def _env(self, cycle_trace_id: str, parent_run_id: str | None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop(tracking.ENV_PARENT, None)  # a parent in the loop's own environment is not this run's
        env.pop(tracking.ENV_RUN_KIND, None)  # the loop's trainings are always kind=train
        env |= {
            tracking.ENV_URI: self.tracking_uri,
            tracking.ENV_EXPERIMENT: self.experiment,
            tracking.ENV_TRACE: cycle_trace_id,
            "PYTHONUNBUFFERED": "1",  # the log shows progress as it happens
        }
        if parent_run_id:
            env[tracking.ENV_PARENT] = parent_run_id
        return env

    def has_capacity(self, runs: list[ActiveRun]) -> bool:
        """True while fewer than max_concurrent of `runs` are still running."""
        return sum(self._running(run) for run in runs) < self.cfg.max_concurrent

    def monitor_window(self, requested: int, runs_active: bool) -> float:
        """Seconds to monitor for a decision's `monitor_seconds`: the default for 0 while runs are active."""
        if requested <= 0 and runs_active:
            requested = self.cfg.monitor_seconds_default
        return float(min(max(requested, 0), self.cfg.monitor_seconds_max))

    # watching ------------------------------------------------------------------------------------

    def poll(self, run: ActiveRun) -> RunOutcome | None:
        """None while the run's process is alive, else how it ended."""
        key = _key(run)
        if key in self._outcomes:
            return self._outcomes[key]
        child = self._children.get(key)
        if child is not None:
            returncode = child.poll()
            if returncode is None:
                return None
            del self._children[key]
        elif self._running(run):
            return None
        else:
            returncode = None
        outcome = self._judge(run, returncode)
        self._outcomes[key] = outcome
        self._terminated.discard(key)
        log.info("%s ended %s (returncode %s)", run.run_label, outcome.status, returncode)
        return outcome

    def monitor(
        self,
        runs: list[ActiveRun],
        seconds: float,
        heartbeat: Callable[[], None],
        should_stop: Callable[[], bool],
    ) -> list[RunOutcome]:
        """Watch `runs` for up to `seconds` (clamped), refreshing the heartbeat; return those that ended."""
        deadline = time.monotonic() + min(max(seconds, 0.0), self.cfg.monitor_seconds_max)
        pending, ended = list(runs), []
        while True:
            for run in list(pending):
                if (outcome := self.poll(run)) is not None:
                    pending.remove(run)
                    ended.append(outcome)
            heartbeat()
            left = deadline - time.monotonic()
            if not pending or left <= 0 or should_stop():
                return ended
            time.sleep(min(self.cfg.poll_interval_s, left))

    @staticmethod
    def alive(pid: int) -> bool:
        """True when a process with this pid exists and is not a zombie."""
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _running(self, run: ActiveRun) -> bool:
        child = self._children.get(_key(run))
        if child is not None:
            return child.poll() is None
        started = _create_time(run.pid)
        same = started is not None and abs(started - run.started_at) <= START_TOLERANCE_S
        return same and self.alive(run.pid)

    # stopping ------------------------------------------------------------------------------------

    def terminate(self, run: ActiveRun) -> RunOutcome:
        """SIGTERM to the run's process group, SIGKILL after stop_grace_s; killed unless it had finished."""
        if (outcome := self.poll(run)) is not None:
            return outcome
        self._terminated.add(_key(run))
        _signal_group(run.pid, signal.SIGTERM)
        self._wait_gone(run, self.cfg.stop_grace_s)
        _signal_group(run.pid, signal.SIGKILL)  # the leader is gone or late; leave no straggler behind
        self._wait_gone(run, KILL_WAIT_S, group=True)
        outcome = self.poll(run)
        if outcome is None:  # unkillable for now (e.g. stuck in the kernel): report it stopped anyway
            log.warning("%s (pid %d) survived SIGKILL for %gs", run.run_label, run.pid, KILL_WAIT_S)
            outcome = self._judge(run, None)
        return outcome

    def _wait_gone(self, run: ActiveRun, seconds: float, group: bool = False) -> None:
        deadline = time.monotonic() + seconds
        while (self._running(run) or (group and _group_alive(run.pid))) and time.monotonic() < deadline:
            time.sleep(0.05)

    # judging -------------------------------------------------------------------------------------

    def _judge(self, run: ActiveRun, returncode: int | None) -> RunOutcome:
        lines = _this_launch(run.log_path)
        summary = _summary(lines)
        base = {"run_label": run.run_label, "returncode": returncode}
        if summary is not None:
            best = summary.get("best")
            return RunOutcome(
                **base,
                status="finished",
                metric=float(best) if isinstance(best, int | float) else None,
                mlflow_run_id=summary.get("run_id") or run.mlflow_run_id,
                summary=summary,
            )
        killed = (
            _key(run) in self._terminated
            or returncode in KILLED_CODES
            or (returncode is None and any(KILLED_MARKER in line for line in lines[-TAIL_LINES:]))
        )
        tail = "\n".join(lines[-TAIL_LINES:])[-TAIL_CHARS:]
        return RunOutcome(
            **base, status="killed" if killed else "failed", mlflow_run_id=run.mlflow_run_id, error_tail=tail
        )


def _key(run: ActiveRun) -> tuple[int, float]:
    return run.pid, run.started_at


def _quote(value: str) -> str:
    """A Hydra override value that stays one literal string (spaces, commas, numbers-looking labels)."""
    return "'" + value.replace("'", "\\'") + "'"


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


def _this_launch(log_path: Path) -> list[str]:
    """The log's lines since the last launch header (all of it when there is none)."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(LAUNCH_PREFIX)]
    return lines[starts[-1] + 1 :] if starts else lines


def _summary(lines: list[str]) -> dict[str, Any] | None:
    """The last parseable summary line, or None."""
    for line in reversed(lines):
        if line.startswith(SUMMARY_PREFIX):
            try:
                found = json.loads(line.removeprefix(SUMMARY_PREFIX))
            except json.JSONDecodeError:
                continue
            if isinstance(found, dict):
                return found
    return None
