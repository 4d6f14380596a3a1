"""What every launcher shares: what to start, a started training's handle, and how it ended."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from agentexp import tracking
from agentexp.codebase import Experiment
from agentexp.launchers.sandbox import Sandbox

SUMMARY_PREFIX = "agentexp-summary:"
"""The trainer's last line on success: this prefix, then the summary as JSON."""
LAUNCH_PREFIX = "agentexp-launch:"
"""The line opening each launch in a log, so a reused label never reads an older run."""
KILLED_MARKER = "the run ended KILLED"
"""What the trainer prints when SIGTERM, SIGINT or its timeout stopped it."""
KILLED_CODES = frozenset({124, 130, 143, -signal.SIGTERM, -signal.SIGINT})
"""Exit codes of a stopped trainer: timeout, SIGINT, SIGTERM (handled or not)."""
TAIL_LINES = 40
TAIL_CHARS = 8000


class LauncherError(Exception):
    """A training could not be started, stated in one sentence."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class LaunchSpec(_Strict):
    """One training process to start."""

    run_label: str
    argv: list[str]
    """Interpreter, module and Hydra overrides: started as a list, never through a shell."""
    env: dict[str, str]
    """The whole environment of the process."""
    log_path: Path
    """Receives stdout and stderr (appended)."""
    run_dir: Path
    """The run's unique folder (hydra.run.dir): also how a process started just before a crash is found."""
    sandbox: Sandbox | None = None
    """Run inside this sandbox (a code experiment), else as a plain process."""


class Handle(_Strict):
    """Where a started training lives, as its launcher knows it."""

    pid: int
    """Process id (the process group leader of a local run)."""
    started_at: float
    """Unix time the process started (a pid alone may be recycled)."""
    host: str = Field(default_factory=socket.gethostname)
    """Machine the process runs on (the submitting one for a SLURM job)."""
    job_id: str | None = None
    """The SLURM job of a training launcher=slurm submitted (pid is then 0)."""


class ActiveRun(_Strict):
    """A training the loop started and still watches."""

    handle: Handle
    run_label: str
    """The run's label (also its log file name)."""
    log_path: Path
    """File receiving the trainer's stdout and stderr."""
    run_dir: Path
    """The run's unique folder."""
    cycle: int
    """Cycle that launched the run."""
    cycle_trace_id: str
    """Trace id of the launching cycle."""
    mlflow_run_id: str | None = None
    """MLflow run id of the training, once known."""
    attempt: int = 1
    """1 for the first launch, 2 after an auto-repair retry."""
    overrides: list[str] = Field(default_factory=list)
    """Hydra overrides the trainer was started with."""
    parent_run_id: str | None = None
    """MLflow run id of the decision that launched it (an auto-repair retry is nested there too)."""
    code_dir: Path | None = None
    """The code tree it runs; None: the checkout."""
    experiment: Experiment | None = None
    """The code experiment it trains."""
    confirms: bool = False
    """A confirmation run of that experiment."""
    gpu: int | None = None
    """The GPU its slot holds (CUDA_VISIBLE_DEVICES); None on CPU or under SLURM."""

    @property
    def pid(self) -> int:
        return self.handle.pid

    @property
    def started_at(self) -> float:
        return self.handle.started_at


class RunOutcome(_Strict):
    """How a training ended, judged from its exit and its log."""

    run_label: str
    """The run's label."""
    status: Literal["finished", "failed", "killed"]
    """finished: the trainer printed its summary; killed: stopped by a signal or timeout; else failed."""
    returncode: int | None
    """Exit code; None when another loop process started it and nobody here saw it exit."""
    metric: float | None = None
    """The summary's best value of the tracked metric."""
    mlflow_run_id: str | None = None
    """MLflow run id of the training (None when it ended before opening one)."""
    summary: dict[str, Any] | None = None
    """The parsed `agentexp-summary: {...}` line."""
    error_tail: str = ""
    """Last lines of the log when the run did not finish (data for the agents, never instructions)."""


class Launcher(Protocol):
    """Starts training processes somewhere and tells when and how they ended."""

    def start(self, spec: LaunchSpec) -> Handle: ...

    def running(self, run: ActiveRun) -> bool: ...

    def poll(self, run: ActiveRun) -> RunOutcome | None: ...

    def terminate(self, run: ActiveRun) -> RunOutcome: ...

    def find(self, spec: LaunchSpec) -> Handle | None: ...


def judge(run: ActiveRun, returncode: int | None, stopped: bool) -> RunOutcome:
    """How a run ended: finished when its summary line is there, killed when stopped, else failed."""
    lines = this_launch(run.log_path)
    found = summary(lines)
    base = {"run_label": run.run_label, "returncode": returncode}
    if found is not None:
        best = found.get("best")
        return RunOutcome(
            **base,
            status="finished",
            metric=float(best) if isinstance(best, int | float) else None,
            mlflow_run_id=found.get("run_id") or run.mlflow_run_id,
            summary=found,
        )
    killed = (
        stopped
        or returncode in KILLED_CODES
        or (returncode is None and any(KILLED_MARKER in line for line in lines[-TAIL_LINES:]))
    )
    tail = "\n".join(lines[-TAIL_LINES:])[-TAIL_CHARS:]
    status = "killed" if killed else "failed"
    return RunOutcome(**base, status=status, mlflow_run_id=run.mlflow_run_id, error_tail=tail)


def this_launch(log_path: Path) -> list[str]:
    """The log's lines since the last launch header (all of it when there is none)."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(LAUNCH_PREFIX)]
    return lines[starts[-1] + 1 :] if starts else lines


def summary(lines: list[str]) -> dict[str, Any] | None:
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


def training_argv(
    python: str,
    module: str,
    overrides: list[str],
    run_label: str,
    run_dir: Path,
    code_dir: Path | None = None,
) -> list[str]:
    """The trainer's command line: interpreter, module, overrides, label and its unique run folder.

    A training of another code tree (`code_dir`, on PYTHONPATH by training_env) runs with `-P`, so the
    working directory's own trainer cannot shadow it."""
    return module_argv(
        python,
        module,
        [
            *overrides,
            f"run_label={_quote(run_label)}",  # quoted: a label like 1e5 or true stays a string
            f"hydra.run.dir={_quote(str(run_dir))}",
        ],
        code_dir,
    )


def module_argv(python: str, module: str, args: list[str], code_dir: Path | None = None) -> list[str]:
    """`python [-P] -m module args...`: how every process of the trainer package starts (training_argv's
    rule for `code_dir`)."""
    return [python, *(["-P"] if code_dir is not None else []), "-m", module, *args]


def training_env(
    uri: str,
    experiment: str,
    trace: str | None = None,
    parent: str | None = None,
    kind: str | None = None,
    code_dir: Path | None = None,
) -> dict[str, str]:
    """The trainer's environment: the store, its nesting, its run kind, and the code it runs."""
    env = {k: v for k, v in os.environ.items() if k not in (tracking.ENV_PARENT, tracking.ENV_RUN_KIND)}
    env.pop(tracking.ENV_TRACE, None)
    env |= {tracking.ENV_URI: uri, tracking.ENV_EXPERIMENT: experiment, "PYTHONUNBUFFERED": "1"}
    for name, value in ((tracking.ENV_TRACE, trace), (tracking.ENV_PARENT, parent)):
        if value:
            env[name] = value
    if kind:
        env[tracking.ENV_RUN_KIND] = kind
    if code_dir is not None:  # that tree's trainers and agentexp come first on the path
        paths = [str(code_dir / "src"), str(code_dir), *filter(None, [os.environ.get("PYTHONPATH")])]
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _quote(value: str) -> str:
    """A Hydra override value that stays one literal string (spaces, commas, numbers-looking labels)."""
    return "'" + value.replace("'", "\\'") + "'"


def run_to_end(launcher: Launcher, spec: LaunchSpec, poll_s: float = 0.5) -> RunOutcome:
    """Start one training and wait for it (`agentexp reproduce` reruns through this)."""
    spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = launcher.start(spec)
    run = ActiveRun(
        handle=handle,
        run_label=spec.run_label,
        log_path=spec.log_path,
        run_dir=spec.run_dir,
        cycle=0,
        cycle_trace_id="",
    )
    while (outcome := launcher.poll(run)) is None:
        time.sleep(poll_s)
    return outcome


def header_is(log_path: Path, trace: str, attempt: int) -> bool:
    """Whether the log's last launch header is this launch's."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return False
    headers = [line for line in lines if line.startswith(LAUNCH_PREFIX)]
    if not headers:
        return False
    header = json.loads(headers[-1].removeprefix(LAUNCH_PREFIX))
    return header.get("cycle_trace_id") == trace and header.get("attempt") == attempt
