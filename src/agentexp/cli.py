"""The `agentexp` command line: composes the config, builds the components, runs the loop and its tools."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import typer

from agentexp import tracking
from agentexp.config import ConfigError, LoopConfig, compose_loop
from agentexp.llm.base import LLMError
from agentexp.mission import MissionError
from agentexp.workspace import Workspace, WorkspaceError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

OVERRIDES = typer.Argument(None, help="Hydra overrides of conf/loop.yaml, e.g. llm=codex loop.max_cycles=50")
WORKSPACE = typer.Option(Path(".llm_loop"), "--workspace", help="the loop's workspace folder")
USER_ERRORS = (ConfigError, MissionError, LLMError, WorkspaceError)


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"Error: {err}", err=True)
    return typer.Exit(2)


def build_loop(cfg: LoopConfig):
    """Wire the components of one loop session from a validated config."""
    from agentexp.agents.mentor import Mentor
    from agentexp.agents.worker import Worker
    from agentexp.config import MISSIONS_DIR
    from agentexp.executor import Executor
    from agentexp.llm import build_backend
    from agentexp.loop import Loop
    from agentexp.mission import load_mission

    mission = load_mission(cfg.mission, MISSIONS_DIR)
    ws = Workspace(cfg.loop.workspace.resolve()).create()
    uri = tracking.resolve_uri(cfg.tracking.uri)
    experiment = tracking.resolve_experiment(cfg.tracking.experiment or mission.name)
    tracker = tracking.Tracker(uri, experiment)
    executor = Executor(ws, cfg.executor, uri, experiment)
    worker = Worker(build_backend(cfg.llm, ws.root), mission, cfg.loop.max_reasks)
    mentor = None
    if cfg.mentor.enabled:
        mentor = Mentor(build_backend(cfg.mentor.llm or cfg.llm, ws.root), mission, cfg.mentor)
    return Loop(cfg, mission, ws, tracker, executor, worker, mentor)


@app.command()
def loop(overrides: list[str] = OVERRIDES) -> None:
    """Run the loop in the foreground for loop.max_cycles cycles (offline planner by default)."""
    try:
        reason = build_loop(compose_loop(overrides or [])).run()
    except USER_ERRORS as err:
        raise _fail(err) from None
    typer.echo(f"loop stopped: {reason}")


@app.command()
def start(
    run_hours: float = typer.Option(8.0, help="stop after this many hours"),
    workspace: Path = WORKSPACE,
    overrides: list[str] = OVERRIDES,
) -> None:
    """Start the loop as a background daemon (single instance per workspace)."""
    ws = Workspace(workspace.resolve())
    if (pid := ws.holder_pid()) is not None:
        raise _fail(WorkspaceError(f"agentexp is already running in {ws.root} (pid {pid})"))
    ws.create()
    args = [
        f"loop.workspace={ws.root}",
        f"loop.run_hours={run_hours}",
        "loop.max_cycles=1000000",
        *(overrides or []),
    ]
    try:
        compose_loop(args)  # a bad override fails here, not in the background
    except ConfigError as err:
        raise _fail(err) from None
    with (ws.logs / "daemon.log").open("a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentexp", "loop", *args],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    for _ in range(50):
        if proc.poll() is not None or ws.holder_pid() == proc.pid:
            break
        time.sleep(0.2)
    if proc.poll() is not None:
        raise _fail(WorkspaceError(f"the daemon exited at once; see {ws.logs / 'daemon.log'}"))
    typer.echo(f"agentexp started (pid {proc.pid}); log: {ws.logs / 'daemon.log'}")


@app.command()
def stop(
    wait: bool = typer.Option(False, "--wait", help="wait until the loop has stopped"),
    timeout: float = typer.Option(300, help="seconds to wait"),
    workspace: Path = WORKSPACE,
) -> None:
    """Ask the loop to stop: running trainings are stopped (their runs end KILLED)."""
    ws = Workspace(workspace.resolve())
    pid = ws.holder_pid()
    if pid is None:
        typer.echo("agentexp is not running")
        return
    ws.request_stop()
    typer.echo(f"stop requested (pid {pid})")
    deadline = time.monotonic() + timeout
    while wait and ws.holder_pid() is not None:
        if time.monotonic() > deadline:
            raise _fail(WorkspaceError(f"the loop (pid {pid}) did not stop within {timeout:g}s"))
        time.sleep(0.5)
    if wait:
        typer.echo("agentexp stopped")


@app.command()
def status(workspace: Path = WORKSPACE) -> None:
    """One-shot status: running/stopped, heartbeat age, active runs, GPU, top-3."""
    from rich.console import Console

    from agentexp.status import render

    Console().print(render(Workspace(workspace.resolve())))


@app.command()
def watch(
    interval: float = typer.Option(30, help="seconds between refreshes"),
    once: bool = typer.Option(False, "--once", help="print one frame and exit"),
    workspace: Path = WORKSPACE,
) -> None:
    """A refreshing status view (Ctrl-C to leave)."""
    from rich.console import Console
    from rich.live import Live

    from agentexp.status import render

    ws = Workspace(workspace.resolve())
    if once:
        Console().print(render(ws))
        return
    with Live(render(ws), refresh_per_second=1, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(ws))
        except KeyboardInterrupt:
            pass


@app.command()
def login(workspace: Path = WORKSPACE) -> None:
    """Log codex in with its own CODEX_HOME under the workspace (`codex login`)."""
    from agentexp.llm.base import CodexConfig
    from agentexp.llm.codex import login_argv

    argv, env = login_argv(CodexConfig(name="codex"), Workspace(workspace.resolve()).create().root)
    try:
        raise typer.Exit(subprocess.call(argv, env=env))
    except FileNotFoundError:
        raise _fail(LLMError("codex CLI not found: npm install -g @openai/codex")) from None


@app.command()
def ui(
    port: int = typer.Option(5000, help="port on 127.0.0.1"),
    uri: str = typer.Option("sqlite:///mlruns/mlflow.db", help="store (MLFLOW_TRACKING_URI wins)"),
) -> None:
    """Serve the MLflow UI over the loop's store on 127.0.0.1 and print each experiment's runs page."""
    store = tracking.resolve_uri(uri)
    for name, experiment_id in tracking.experiments(store).items():
        typer.echo(f"{name}: {tracking.runs_page(experiment_id, port)}")
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # the job runner spawns many processes
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        store,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    raise typer.Exit(subprocess.call(argv, env=env))
