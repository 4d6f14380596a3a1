"""Fresh reset and the data link: `agentexp reset` archives or purges, keeps what it is asked to keep."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentexp import tracking
from agentexp.cli import app
from agentexp.workspace import AlreadyRunning, Workspace

FILES = {
    "state.json": '{"cycle": 3}',
    "storyline.md": "- cycle 1 tried resnet18\n",
    "logs/events.jsonl": '{"event": "cycle_end"}\n',
    "artifacts/workpad.md": "# Workpad\n",
    "codex_home/auth.json": '{"token": "secret"}',
}


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "dataset"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "1.png").write_bytes(b"png")
    return root


@pytest.fixture
def ws(tmp_path, dataset) -> Workspace:
    """A used workspace: files, a Codex login and a data link."""
    ws = Workspace(tmp_path / ".llm_loop", clock=lambda: 1_800_000_000.0).create()
    for name, text in FILES.items():
        (ws.root / name).parent.mkdir(parents=True, exist_ok=True)
        (ws.root / name).write_text(text)
    ws.link_data(dataset)
    return ws


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def contents(root: Path) -> dict[str, str]:
    return {name: (root / name).read_text() for name in FILES if (root / name).exists()}


def train_runs(store, experiment: str, n: int) -> list[str]:
    experiment_id = tracking.ensure_store(store.uri, experiment)
    runs = [store.client.create_run(experiment_id, tags={tracking.KIND: "train"}) for _ in range(n)]
    for run in runs:
        store.client.set_terminated(run.info.run_id)
    return [run.info.run_id for run in runs]


def test_link_data_points_at_the_dataset_and_relinks(tmp_path, dataset):
    result = cli("link-data", str(dataset), "--workspace", str(tmp_path / "w"))
    assert result.exit_code == 0, result.output
    link = tmp_path / "w" / "data"
    assert link.is_symlink() and link.resolve() == dataset and (link / "cats" / "1.png").exists()
    other = tmp_path / "other"
    other.mkdir()
    assert cli("link-data", str(other), "--workspace", str(tmp_path / "w")).exit_code == 0
    assert link.resolve() == other


def test_link_data_to_a_missing_path_is_one_clear_line(tmp_path):
    result = cli("link-data", str(tmp_path / "missing"), "--workspace", str(tmp_path / "w"))
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: {tmp_path / 'missing'} does not exist: link-data needs your dataset's folder or file"
    )
    assert not (tmp_path / "w" / "data").is_symlink()


def test_reset_archives_everything_and_keeps_mlflow(ws, tmp_path, store, dataset):
    before = contents(ws.root)
    runs = train_runs(store, "test", 2)
    result = cli("reset", "--workspace", str(ws.root))
    assert result.exit_code == 0, result.output
    (archive,) = (tmp_path / ".llm_loop_archive").iterdir()
    assert re.fullmatch(r"\d{8}T\d{6}Z", archive.name)  # UTC time of the reset
    assert result.output.splitlines() == [f"archived {ws.root} to {archive}", "MLflow history kept"]
    assert contents(archive) == before and (archive / "data").resolve() == dataset
    assert list(ws.root.iterdir()) == []  # a fresh, empty workspace
    assert [r.info.run_id for r in store.runs("train")] == runs


def test_two_resets_in_one_second_get_two_archives(ws, tmp_path):
    first = ws.reset(archive=True)
    (ws.root / "state.json").write_text("{}")
    second = ws.reset(archive=True)
    assert (first.name, second.name) == ("20270115T080000Z", "20270115T080000Z-2")
    assert (first / "state.json").read_text() == FILES["state.json"]
    assert (second / "state.json").read_text() == "{}"


def test_reset_keeps_the_login_and_the_data_link_when_asked(ws, tmp_path, dataset):
    result = cli("reset", "--keep-login", "--keep-data-link", "--workspace", str(ws.root))
    assert result.exit_code == 0, result.output
    assert "kept codex_home and data in the fresh workspace" in result.output
    assert contents(ws.root) == {"codex_home/auth.json": FILES["codex_home/auth.json"]}
    assert (ws.root / "data").is_symlink() and (ws.root / "data").resolve() == dataset
    archive = next((tmp_path / ".llm_loop_archive").iterdir())
    assert set(contents(archive)) == set(FILES) - {"codex_home/auth.json"}
    assert not (archive / "data").exists()


def test_purge_deletes_the_workspace_and_the_experiments_runs_only(ws, tmp_path, store, dataset):
    train_runs(store, "test", 2)
    others = train_runs(store, "other", 1)
    result = cli("reset", "--purge", "--keep-login", "--workspace", str(ws.root))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"deleted {ws.root}; kept codex_home in the fresh workspace"
    assert lines[1].startswith(f"deleted 2 MLflow runs and 0 traces of experiment 'test' in {store.uri}")
    assert sorted(p.name for p in ws.root.iterdir()) == ["codex_home"]
    assert not (tmp_path / ".llm_loop_archive").exists()
    assert (dataset / "cats" / "1.png").read_bytes() == b"png"  # the link went, never the data
    assert store.runs("train") == []
    assert [r.info.run_id for r in store.runs("train", experiment="other")] == others


HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agentexp.workspace import Workspace
    with Workspace(Path(sys.argv[1])).lock():
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def test_reset_refuses_while_the_loop_holds_the_lock(ws, tmp_path):
    before = contents(ws.root)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ws.root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = cli("reset", "--purge", "--workspace", str(ws.root))
        assert result.exit_code == 2
        assert result.output.strip() == (
            f"Error: the loop is running in {ws.root} (pid {holder.pid}): "
            "stop it first (agentexp stop --wait)"
        )
        with pytest.raises(AlreadyRunning, match=f"pid {holder.pid}"):
            ws.reset(archive=True)  # the workspace guards itself too, not only the command
    finally:
        holder.communicate("\n", timeout=10)
    assert contents(ws.root) == before and not (tmp_path / ".llm_loop_archive").exists()
    assert os.path.islink(ws.root / "data")
