"""The `agentexp` command line: composes the config, builds the components, runs the loop and its tools."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import typer

from agentexp import tracking
from agentexp.config import ConfigError, LoopConfig, compose_loop
from agentexp.finishup import FinishUpError
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
    from agentexp.finisher import Finisher
    from agentexp.launchers.local import LocalLauncher
    from agentexp.llm import build_backend
    from agentexp.loop import Loop
    from agentexp.mission import load_mission
    from agentexp.trainings import Trainings

    mission = load_mission(cfg.mission, MISSIONS_DIR)
    ws = Workspace(cfg.loop.workspace.resolve()).create()
    uri = tracking.resolve_uri(cfg.tracking.uri)
    experiment = tracking.resolve_experiment(cfg.tracking.experiment or mission.name)
    tracker = tracking.Tracker(uri, experiment)
    launcher = LocalLauncher(cfg.executor.stop_grace_s)
    stale = (cfg.loop.stale_orphan_cycles, cfg.loop.stuck_wait_recovery)
    trainings = Trainings(ws, launcher, cfg.executor, cfg.repair, tracker, *stale)
    worker = Worker(build_backend(cfg.llm, ws.root), mission, cfg.loop.max_reasks)
    mentor = None
    if cfg.mentor.enabled:
        mentor = Mentor(build_backend(cfg.mentor.llm or cfg.llm, ws.root), mission, cfg.mentor)
    finisher = Finisher(ws, tracking.Source(uri, experiment, mission.summary_key, mission.direction))
    return Loop(cfg, mission, ws, tracker, trainings, worker, mentor, finisher)


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
        files = finisher_files(session.ws)
        typer.echo("\n".join(console.closing(session.finisher.src, rows, str(session.ws.root), files)))


def finisher_files(ws: Workspace) -> list[str]:
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


TOP_K = typer.Option(10, "--top-k", min=1, help="configurations on the leaderboard")
STORE_URI = typer.Option(None, "--uri", help="MLflow store (MLFLOW_TRACKING_URI, else conf/loop.yaml)")
EXPERIMENT = typer.Option(None, "--experiment", help="default: MLFLOW_EXPERIMENT_NAME, else the mission")
MISSION = typer.Option(
    None, "--mission", help="rank by this mission's metric (default: what the experiment's loop run recorded)"
)


def _source(uri: str | None, experiment: str | None, mission: str | None = None) -> tracking.Source:
    """The store as the loop finds it (MLFLOW_* variables win over conf/loop.yaml; options win over both)
    and what counts as better there: the experiment's loop run, or --mission, or the default mission."""
    from agentexp.config import MISSIONS_DIR
    from agentexp.mission import load_mission

    cfg = compose_loop([f"mission={mission}"] if mission else [])
    m = load_mission(cfg.mission, MISSIONS_DIR)
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    uri = uri or tracking.resolve_uri(cfg.tracking.uri)
    experiment = experiment or tracking.resolve_experiment(cfg.tracking.experiment or m.name)
    return tracking.locate(uri, experiment, m.summary_key, m.direction, mission_given=mission is not None)


@app.command()
def report(
    top_k: int = TOP_K,
    workspace: Path = WORKSPACE,
    uri: str | None = STORE_URI,
    experiment: str | None = EXPERIMENT,
    mission: str | None = MISSION,
) -> None:
    """Leaderboard, condensed story and paper-style report from MLflow, into <workspace>/artifacts/."""
    from agentexp import report as final

    try:
        files = final.write_report(_source(uri, experiment, mission), top_k, Workspace(workspace.resolve()))
    except (final.ReportError, *USER_ERRORS) as err:
        raise _fail(err) from None
    typer.echo("\n".join(str(path) for path in files))


@app.command()
def leaderboard(
    top_k: int = TOP_K,
    uri: str | None = STORE_URI,
    experiment: str | None = EXPERIMENT,
    mission: str | None = MISSION,
) -> None:
    """Print the top-k configurations (seed runs aggregated) as a Markdown table."""
    from agentexp import report as final
    from agentexp.ranking import markdown_table

    try:
        entries = final.leaderboard(_source(uri, experiment, mission), top_k)
    except (final.ReportError, *USER_ERRORS) as err:
        raise _fail(err) from None
    typer.echo(markdown_table(entries), nl=False)


TOLERANCE = typer.Option(0.01, "--tolerance", min=0, help="largest accepted |diff| of best_<metric>")
REPO = typer.Option(Path("."), "--repo", help="the project's git checkout (holds the recorded commit)")
DATA_PATH = typer.Argument(..., help="your dataset's folder (or file)")


@app.command()
def reproduce(
    run_id: str, tolerance: float = TOLERANCE, repo: Path = REPO, uri: str | None = STORE_URI
) -> None:
    """Rerun a training from its recorded provenance as an audit run; exit 1 unless it matches."""
    from agentexp import audit
    from agentexp import report as final
    from agentexp.provenance import CheckoutError

    try:
        result = audit.reproduce(_source(uri, None).uri, run_id, repo, tolerance)
    except (audit.AuditError, CheckoutError, final.ReportError, *USER_ERRORS) as err:
        raise _fail(err) from None
    typer.echo("\n".join(result.lines()))
    if not result.ok:
        raise typer.Exit(1)


@app.command("audit")
def audit_runs(uri: str | None = STORE_URI, experiment: str | None = EXPERIMENT) -> None:
    """List finished training runs lacking provenance needed to reproduce them; exit 1 when any do."""
    from agentexp import audit
    from agentexp import report as final

    try:
        source = _source(uri, experiment)
        total, lines = audit.audit(source.uri, source.experiment)
    except (audit.AuditError, final.ReportError, *USER_ERRORS) as err:
        raise _fail(err) from None
    if not lines:
        typer.echo(f"all {total} training runs are reproducible")
        return
    typer.echo("\n".join([*lines, f"{len(lines)} of {total} training runs cannot be reproduced"]))
    raise typer.Exit(1)


@app.command()
def reset(
    keep_login: bool = typer.Option(False, "--keep-login", help="keep the Codex login (codex_home/)"),
    keep_data_link: bool = typer.Option(False, "--keep-data-link", help="keep the data link"),
    purge: bool = typer.Option(False, "--purge", help="delete, not archive; delete the experiment's runs"),
    workspace: Path = WORKSPACE,
    uri: str | None = STORE_URI,
    experiment: str | None = EXPERIMENT,
) -> None:
    """Start fresh: move the workspace to <workspace>_archive/<UTC time>/ (or delete it with --purge)."""
    from agentexp import report as final
    from agentexp import reset as fresh

    try:
        store = None
        if purge:
            source = _source(uri, experiment)
            store = (source.uri, source.experiment)
        lines = fresh.reset(Workspace(workspace.resolve()), keep_login, keep_data_link, purge, store)
    except (final.ReportError, *USER_ERRORS) as err:
        raise _fail(err) from None
    typer.echo("\n".join(lines))


@app.command("link-data")
def link_data(path: Path = DATA_PATH, workspace: Path = WORKSPACE) -> None:
    """Make <workspace>/data a link to your dataset (data presets may refer to it)."""
    ws = Workspace(workspace.resolve())
    try:
        target = ws.link_data(path)
    except WorkspaceError as err:
        raise _fail(err) from None
    typer.echo(f"{ws.data_link} -> {target}")


WHEN = "when to activate finish-up (only one of the two)"


@app.command()
def finishup(
    minutes_left: float | None = typer.Option(None, help="minutes from activation to the deadline (60)"),
    run_hours: float | None = typer.Option(None, help="deadline this many hours from now"),
    activate_in_minutes: float | None = typer.Option(None, help=WHEN),
    activate_at_utc: str | None = typer.Option(None, help=WHEN + ", e.g. 2026-12-01T22:00:00Z"),
    final_training_rounds: int = typer.Option(1, min=0, help="rounds of extra seed runs for the top-k"),
    top_k: int | None = typer.Option(
        None, min=1, help="candidates that get seed runs; leaderboard rows (10)"
    ),
    seeds_per_candidate: int = typer.Option(3, min=1, help="seed runs each top-k candidate ends with"),
    note: str = typer.Option("", help="shown with the deadline in the agents' prompts"),
    show: bool = typer.Option(False, "--show", help="print the schedule"),
    cancel: bool = typer.Option(False, "--cancel", help="cancel the schedule"),
    force_report_now: bool = typer.Option(False, "--force-report-now", help="report now, no final training"),
    workspace: Path = WORKSPACE,
    uri: str | None = STORE_URI,
    experiment: str | None = EXPERIMENT,
    mission: str | None = MISSION,
) -> None:
    """Schedule finish-up: once active the loop reruns the top candidates with more seeds, reports, stops."""
    from datetime import UTC, datetime

    from agentexp import finisher, finishup
    from agentexp import report as final

    ws, now = Workspace(workspace.resolve()), datetime.now(UTC)
    try:
        if show:
            f = finisher.load(ws)
            typer.echo(finishup.describe(f, now) if f else "no finish-up scheduled")
        elif cancel:
            typer.echo(finisher.cancel(ws))
        elif force_report_now:
            done = finisher.force_report(ws, _source(uri, experiment, mission), top_k, now)
            typer.echo("\n".join(done.report_files))
            if (pid := ws.holder_pid()) is not None:
                ws.request_stop()
                typer.echo(f"the running loop (pid {pid}) was asked to stop")
        else:
            when = (minutes_left, run_hours, activate_in_minutes, activate_at_utc)
            f = finishup.schedule(now, *when, final_training_rounds, top_k or 10, seeds_per_candidate, note)
            finisher.save(ws.create(), f)
            typer.echo(finishup.describe(f, now))
    except (FinishUpError, final.ReportError, *USER_ERRORS) as err:
        raise _fail(err) from None


def _schedule(ws: Workspace, minutes: float, run_hours: float, rounds: int, top_k: int) -> None:
    """`start --finishup-minutes`: the deadline is the daemon's end (now + run_hours)."""
    from datetime import UTC, datetime

    from agentexp import finisher, finishup

    f = finishup.schedule(datetime.now(UTC), minutes, run_hours, final_training_rounds=rounds, top_k=top_k)
    finisher.save(ws, f)
