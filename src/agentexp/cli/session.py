"""Commands around a loop session: run it, start/stop the daemon, watch it, log in, serve the UI."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import typer

from agentexp import tracking
from agentexp.cli.app import (
    OVERRIDES,
    USER_ERRORS,
    WORKSPACE,
    _fail,
    _schedule,
    app,
)
from agentexp.config import ConfigError, LoopConfig, compose_loop
from agentexp.finishup import FinishUpError
from agentexp.llm.base import LLMError
from agentexp.workspace import Workspace, WorkspaceError


def build_loop(cfg: LoopConfig):
    """Wire the components of one loop session from a validated config."""
    from agentexp.agents.mentor import Mentor
    from agentexp.agents.worker import Worker
    from agentexp.config import MISSIONS_DIR, with_mission_space
    from agentexp.experiments import Experiments, open_codebase
    from agentexp.finisher import Finisher
    from agentexp.llm import build_backend
    from agentexp.loop import Loop
    from agentexp.mission import load_mission
    from agentexp.pruning import Pruner
    from agentexp.trainings import Trainings

    mission = load_mission(cfg.mission, MISSIONS_DIR)
    cfg = with_mission_space(cfg, mission.space)
    ws = Workspace(cfg.loop.workspace.resolve()).create()
    uri = tracking.resolve_uri(cfg.tracking.uri)
    experiment = tracking.resolve_experiment(cfg.tracking.experiment or mission.name)
    tracker = tracking.Tracker(uri, experiment)
    launcher, slots = _launcher(cfg, ws)
    stale = (cfg.loop.stale_orphan_cycles, cfg.loop.stuck_wait_recovery)
    codebase = open_codebase(cfg.code, mission.name, ws.root)
    code = Experiments(cfg.code, codebase, mission.summary_key, mission.direction)
    pruner = Pruner(cfg.executor.prune, tracker, mission.metric_key, mission.direction)
    trainings = Trainings(
        ws, launcher, cfg.executor, cfg.repair, tracker, *stale, code=code, pruner=pruner, slots=slots
    )
    worker_llm = build_backend(cfg.llm, ws.root)
    worker = Worker(worker_llm, mission, cfg.loop.max_reasks, retry=cfg.llm.retry, gate=cfg.gate)
    mentor = None
    if cfg.mentor.enabled:
        mentor_llm = cfg.mentor.llm or cfg.llm
        backend = build_backend(mentor_llm, ws.root)
        mentor = Mentor(backend, mission, cfg.mentor, retry=mentor_llm.retry, gate=cfg.gate)
    finisher = Finisher(ws, tracking.Source(uri, experiment, mission.summary_key, mission.direction))
    return Loop(cfg, mission, ws, tracker, trainings, worker, mentor, finisher)


def _launcher(cfg: LoopConfig, ws: Workspace):
    """The launcher the config names and its slots (None: this machine's, from executor)."""
    from agentexp.launchers.local import LocalLauncher
    from agentexp.launchers.slots import Slots
    from agentexp.launchers.slurm import SlurmConfig, SlurmLauncher

    if isinstance(cfg.launcher, SlurmConfig):  # SLURM binds each job's GPUs; its CPUs are its threads
        slots = Slots(cfg.executor.max_concurrent, [], cfg.launcher.cpus_per_job)
        return SlurmLauncher(cfg.launcher, ws.root / "slurm", cfg.executor.stop_grace_s), slots
    return LocalLauncher(cfg.executor.stop_grace_s), None


@app.command()
def loop(
    overrides: list[str] = OVERRIDES,
    quiet: bool = typer.Option(False, "-q", "--quiet", help="no per-cycle lines, no closing summary"),
) -> None:
    """Run the loop in the foreground for loop.max_cycles cycles (offline planner by default)."""
    from agentexp import console

    console.setup(quiet)
    try:
        session = build_loop(compose_loop(overrides or []))
        reason = session.run()
    except USER_ERRORS as err:
        raise _fail(err) from None
    typer.echo(f"loop stopped: {reason}")
    if not quiet:
        rows = session.tracker.training_runs()
        files = _finish_up_files(session.ws)
        typer.echo("\n".join(console.closing(session.finisher.src, rows, str(session.ws.root), files)))


def _finish_up_files(ws: Workspace) -> list[str]:
    """The report files finish-up wrote in this workspace, if it did."""
    from agentexp import finisher

    try:
        f = finisher.load(ws)
    except WorkspaceError:
        return []
    return f.report_files if f else []


@app.command()
def start(
    run_hours: float = typer.Option(8.0, help="stop after this many hours"),
    finishup_minutes: float | None = typer.Option(None, help="schedule finish-up this many minutes before"),
    finishup_final_training_rounds: int = typer.Option(1, min=0, help="finish-up rounds of seed runs"),
    finishup_top_k: int = typer.Option(10, min=1, help="finish-up candidates and leaderboard rows"),
    workspace: Path = WORKSPACE,
    overrides: list[str] = OVERRIDES,
) -> None:
    """Start the loop as a background daemon (single instance per workspace)."""
    ws = Workspace(workspace.resolve())
    if (pid := ws.holder_pid()) is not None:
        raise _fail(WorkspaceError(f"agentexp is already running in {ws.root} (pid {pid})"))
    ws.create()
    # Hydra's last value wins: the user may lower max_cycles, never move the daemon off --workspace.
    args = [
        "loop.max_cycles=1000000",
        *(overrides or []),
        f"loop.workspace={ws.root}",
        f"loop.run_hours={run_hours}",
    ]
    try:
        compose_loop(args)  # a bad override fails here, not in the background
        if finishup_minutes is not None:
            _schedule(ws, finishup_minutes, run_hours, finishup_final_training_rounds, finishup_top_k)
    except (ConfigError, FinishUpError) as err:
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
    from agentexp.launchers.local import alive

    ws.request_stop()
    typer.echo(f"stop requested (pid {pid})")
    deadline = time.monotonic() + timeout
    while wait and (ws.holder_pid() is not None or alive(pid)):  # the lock goes before the process does
        if time.monotonic() > deadline:
            raise _fail(WorkspaceError(f"the loop (pid {pid}) did not stop within {timeout:g}s"))
        time.sleep(0.2)
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
    tracking.prepare_store(store)  # the server would migrate a new store while a training does the same
    for name, experiment_id in tracking.experiments(store).items():
        typer.echo(f"{name}: {tracking.runs_page(experiment_id, port)}")
    from agentexp.server import run_mlflow_server

    raise typer.Exit(run_mlflow_server(store, "127.0.0.1", port))


HOST_HELP = "address to listen on; 0.0.0.0 serves other machines (by IP; names: MLFLOW_SERVER_ALLOWED_HOSTS)"
ARTIFACT_ROOT = typer.Option(Path("mlruns/server-artifacts"), help="where the server keeps artifacts")
PG_DIR = typer.Option(Path("mlruns/postgres"), help="the local PostgreSQL cluster's folder")


@app.command()
def server(
    port: int = typer.Option(5000, help="port of the tracking server"),
    host: str = typer.Option("127.0.0.1", help=HOST_HELP),
    backend_store_uri: str | None = typer.Option(None, help="a PostgreSQL URI; default: the local cluster"),
    artifact_root: Path = ARTIFACT_ROOT,
    pg_dir: Path = PG_DIR,
    pg_port: int = typer.Option(5433, help="the local cluster's port on 127.0.0.1"),
) -> None:
    """A shared MLflow server on PostgreSQL: point MLFLOW_TRACKING_URI at it from every machine."""
    from agentexp import server as tracking_server

    pg = tracking_server.LocalPostgres(pg_dir.resolve(), pg_port)
    try:
        code = tracking_server.serve(host, port, artifact_root, backend_store_uri, pg, typer.echo)
    except tracking_server.ServerError as err:
        raise _fail(err) from None
    raise typer.Exit(code)
