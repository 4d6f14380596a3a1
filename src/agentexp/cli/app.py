"""The `agentexp` Typer app and what its commands share: options, the one-line error, locating the store."""

from __future__ import annotations

from pathlib import Path

import typer

from agentexp import tracking
from agentexp.config import ConfigError, compose_loop
from agentexp.launchers.base import LauncherError
from agentexp.llm.base import LLMError
from agentexp.mission import MissionError
from agentexp.workspace import Workspace, WorkspaceError

HELP = "agentexp: an autonomous, LLM-driven CNN experimentation loop with MLflow as the system of record."
app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)

OVERRIDES = typer.Argument(None, help="Hydra overrides of conf/loop.yaml, e.g. llm=codex loop.max_cycles=50")
WORKSPACE = typer.Option(Path(".llm_loop"), "--workspace", help="the loop's workspace folder")
USER_ERRORS = (ConfigError, MissionError, LLMError, WorkspaceError, LauncherError)


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"Error: {err}", err=True)
    return typer.Exit(2)


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


def _schedule(ws: Workspace, minutes: float, run_hours: float, rounds: int, top_k: int) -> None:
    """`start --finishup-minutes`: the deadline is the daemon's end (now + run_hours)."""
    from datetime import UTC, datetime

    from agentexp import finisher, finishup

    f = finishup.schedule(datetime.now(UTC), minutes, run_hours, final_training_rounds=rounds, top_k=top_k)
    finisher.save(ws, f)
