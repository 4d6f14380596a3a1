"""`agentexp server`: MLflow on a real local PostgreSQL; the trainer, the loop and reports work through it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from pg_fixtures import free_port, listening, start_server
from typer.testing import CliRunner

from agentexp import server, tracking
from agentexp.cli import app, build_loop
from agentexp.config import compose_loop

pytest_plugins = ["pg_fixtures"]

TINY = ["debug=fast", "data.image_size=16"]


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        # The bare scheme gets the psycopg2 driver (not psycopg 3's), the password stays hidden.
        (
            "postgresql://agentexp:s3cret@127.0.0.1:{port}/x",
            "at postgresql+psycopg2://agentexp:***@127.0.0.1",
        ),
        ("sqlite:///mlflow.db", "must be a postgresql:// URI"),
    ],
)
def test_a_wrong_store_uri_is_one_sentence(uri, says):
    error = server_fails("--port", str(free_port()), "--backend-store-uri", uri.format(port=free_port()))
    assert says in error and "s3cret" not in error


def test_a_taken_port_is_one_sentence():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        error = server_fails("--port", str(port), "--backend-store-uri", "postgresql://nobody@127.0.0.1:1/x")
    assert f"cannot listen on 127.0.0.1:{port}" in error


def server_fails(*args: str) -> str:
    """Run `agentexp server ARGS`, which must fail with one sentence on stderr; that sentence."""
    argv = [sys.executable, "-m", "agentexp", "server", *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    return done.stderr


def test_server_creates_its_cluster_records_into_it_and_sigterm_leaves_nothing_running(pg_root):
    pg = server.LocalPostgres(pg_root / "pg", free_port())
    running = start_server(["--pg-dir", str(pg.root), "--pg-port", str(pg.port)], pg_root)
    assert f"UI: {running.url}" in running.log.read_text()
    client = MlflowClient(running.url)
    run = client.create_run(client.create_experiment("probe"))
    client.log_metric(run.info.run_id, "val_acc", 0.5)
    # The server's record is PostgreSQL's: read it back from the database, not through the server.
    assert MlflowClient(pg.uri).get_run(run.info.run_id).data.metrics == {"val_acc": 0.5}
    children = psutil.Process(running.proc.pid).children(recursive=True)
    assert any("uvicorn" in " ".join(c.cmdline()) for c in children)

    assert running.stop() == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [] and not listening(running.port) and not pg.running()


def decision(action: str) -> str:
    base = {"action": action, "rationale": "resnet18 at lr 2e-3 is the baseline to beat"}
    base |= {"monitor_seconds": 120}
    if action == "train":
        base |= {"run_label": "resnet18-lr2e-3", "overrides": ["optim.lr=0.002"]}
        base |= {"strategy_dimension": "optimization"}
    return json.dumps(base)


def exercise(folder: Path) -> dict:
    """A training, a two-cycle loop, then report and leaderboard, all against MLFLOW_TRACKING_URI."""
    folder.mkdir()
    train = [sys.executable, "-m", "trainers.train", *TINY, "run_label=solo"]
    subprocess.run(train, cwd=folder, check=True, capture_output=True, timeout=600)
    script = folder / "worker.jsonl"
    script.write_text("".join(json.dumps({"raw": decision(a)}) + "\n" for a in ("train", "wait")))
    overrides = [
        "llm=scripted",
        f"llm.script={script}",
        "mentor.enabled=false",
        f"loop.workspace={folder / '.llm_loop'}",
        "loop.poll_seconds=0",
        "loop.max_cycles=2",
        "loop.train_overrides=[" + ",".join(f"'{o}'" for o in TINY) + "]",
    ]
    assert build_loop(compose_loop(overrides)).run() == "max_cycles"
    report = CliRunner().invoke(app, ["report", "--top-k", "3", "--workspace-root", str(folder)])
    board = CliRunner().invoke(app, ["leaderboard", "--top-k", "3"])
    assert report.exit_code == 0 and board.exit_code == 0, report.output + board.output
    files = sorted(Path(p).name for p in report.output.split())
    return {"runs": runs_as_seen(), "report": files, "board": board}


def runs_as_seen() -> list[tuple]:
    """What a user sees of each run in MLflow, less the ids and times that differ between any two sessions."""
    client = MlflowClient(os.environ[tracking.ENV_URI])
    experiment = client.get_experiment_by_name(os.environ[tracking.ENV_EXPERIMENT])
    seen = []
    for run in client.search_runs([experiment.experiment_id]):
        data, artifacts = run.data, sorted(artifact_paths(client, run.info.run_id))
        keys = [sorted(data.params), sorted(data.metrics), sorted(data.tags)]
        seen.append((data.tags[tracking.KIND], run.info.status, *keys, artifacts))
    return sorted(seen)


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return found


@pytest.mark.slow
def test_trainer_loop_and_report_see_the_same_runs_through_the_server_as_with_sqlite(
    tracking_server, tmp_path, monkeypatch
):
    with_sqlite = exercise(tmp_path / "sqlite")
    monkeypatch.setenv(tracking.ENV_URI, tracking_server.url)
    with_server = exercise(tmp_path / "server")

    assert with_server["runs"] == with_sqlite["runs"]
    kinds = [run[0] for run in with_server["runs"]]
    assert sorted(kinds) == ["decision", "decision", "loop", "train", "train"]
    # Artifacts went through the server into its artifact root, not onto the client's disk.
    assert len(list(tracking_server.artifacts.rglob("confusion_matrix.png"))) == 2
    assert with_server["report"] == with_sqlite["report"]
    rows = [line.split(" | ")[2] for line in with_server["board"].output.splitlines()[2:]]
    assert sorted(rows) == ["resnet18-lr2e-3", "solo"]
