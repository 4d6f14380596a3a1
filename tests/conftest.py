"""Shared fixtures: a fresh MLflow store per test (copied from one migrated template), real Hydra configs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import psutil
import pytest
from helpers import write_image
from mlflow.tracking import MlflowClient

from agentexp import tracking
from agentexp.workspace import Workspace


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    """One sqlite store migrated once per session; each test gets a copy (migrations take seconds)."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


class Store:
    def __init__(self, root: Path):
        self.root = root
        self.uri = f"sqlite:///{root / 'mlflow.db'}"
        self.client = MlflowClient(self.uri)

    def runs(self, kind: str | None = None, experiment: str = "test"):
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        query = f"tags.`{tracking.KIND}` = '{kind}'" if kind else ""
        return self.client.search_runs([found.experiment_id], query, order_by=["attributes.start_time ASC"])


@pytest.fixture(autouse=True)
def store(tmp_path, template_db, monkeypatch) -> Store:
    """Every test runs in tmp_path against its own store: nothing lands in the repository's mlruns/."""
    root = tmp_path / "mlruns"
    root.mkdir()
    shutil.copy(template_db, root / "mlflow.db")
    result = Store(root)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(tracking.ENV_URI, result.uri)
    monkeypatch.setenv(tracking.ENV_EXPERIMENT, "test")
    for name in (tracking.ENV_PARENT, tracking.ENV_TRACE):
        monkeypatch.delenv(name, raising=False)
    yield result
    leaked = mlflow.active_run()
    if leaked is not None:
        mlflow.end_run()
        pytest.fail(f"test leaked an active MLflow run {leaked.info.run_id}")


@pytest.fixture(autouse=True)
def no_process_outlives_the_test(tmp_path):
    """Loops, daemons and trainers all name tmp_path on their command line; none survives its test."""
    yield
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != os.getpid() and str(tmp_path) in " ".join(proc.info["cmdline"] or []):
                proc.kill()
        except psutil.Error:
            pass


@pytest.fixture
def ws(tmp_path) -> Workspace:
    """A fresh workspace in tmp_path."""
    return Workspace(tmp_path / ".llm_loop").create()


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three colour classes, eight images each: learnable in a few steps."""
    root = tmp_path / "images"
    colors = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
    for name, (r, g, b) in colors.items():
        for i in range(8):
            write_image(root / name / f"{i}.png", (r, g + i, b))
    return root


@pytest.fixture(scope="module")
def partition() -> str:
    """The cluster's default partition; the tests skip when no SLURM answers here."""
    if shutil.which("sinfo") is None:
        pytest.skip("no SLURM client on PATH (make test-slurm brings up a local cluster)")
    try:  # without a controller sinfo retries for ~9 s: the fast suite should not wait for that
        done = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        pytest.skip("no SLURM controller answers within 5 s (tests/slurm/cluster.sh up)")
    if done.returncode != 0:
        pytest.skip(f"no SLURM cluster answers: {done.stderr.strip()} (tests/slurm/cluster.sh up)")
    return next(p for p in done.stdout.split() if p.endswith("*")).rstrip("*")
