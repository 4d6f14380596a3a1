"""The `agentexp` command line: composes the config, builds the components, runs the loop and its tools."""

from __future__ import annotations

import os
import subprocess
import sys

import typer

from agentexp import tracking

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def ui(
    port: int = typer.Option(5000, help="port on 127.0.0.1"),
    uri: str = typer.Option("sqlite:///mlruns/mlflow.db", help="store (MLFLOW_TRACKING_URI wins)"),
    experiment: str = typer.Option("agentexp", help="experiment to open (MLFLOW_EXPERIMENT_NAME wins)"),
) -> None:
    """Serve the MLflow UI over the loop's store on 127.0.0.1 and print the page of its training runs."""
    store = tracking.resolve_uri(uri)
    experiment_id = tracking.ensure_store(store, tracking.resolve_experiment(experiment))
    typer.echo(f"training runs: {tracking.runs_page(experiment_id, port)}")
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
