"""Reproducibility: `agentexp reproduce` reruns the recorded code and config, `agentexp audit` finds gaps."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import git
import pytest
import yaml
from typer.testing import CliRunner

from agentexp import tracking
from agentexp.audit import Reproduction
from agentexp.cli import app

MAIN = Path(__file__).resolve().parents[1]
TINY_RUN = ["debug=fast", "data.image_size=16", "trainer.epochs=1", "trainer.deterministic=true"]
SEED_LINE = "L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)"


@pytest.fixture
def project(tmp_path) -> Path:
    """A throwaway checkout of this project's code with one commit."""
    root = tmp_path / "project"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for folder in ("trainers", "conf", "src/agentexp"):
        shutil.copytree(MAIN / folder, root / folder, ignore=ignore)
    shutil.copy(MAIN / "pyproject.toml", root)
    (root / ".gitignore").write_text("__pycache__/\noutputs/\n")
    repo = git.Repo.init(root)
    with repo.config_writer() as config:
        config.set_value("user", "name", "test").set_value("user", "email", "test@example.com")
    _commit(root, "v1")
    return root


def _commit(root: Path, message: str) -> str:
    repo = git.Repo(root)
    repo.git.add("--all")
    repo.index.commit(message)
    return repo.head.commit.hexsha


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {path}"
    path.write_text(text.replace(old, new))


def change_the_trainer(root: Path) -> str:
    """Commit a new default learning rate and a different seeding: the metric of TINY_RUN changes."""
    _edit(root / "conf/optim/adamw.yaml", "lr: 1.0e-3", "lr: 1.0e-2")
    _edit(root / "trainers/train.py", SEED_LINE, SEED_LINE.replace(".seed,", ".seed + 1000,"))
    return _commit(root, "a trainer change")


def train_in(root: Path, tmp_path: Path, *overrides: str) -> str:
    """Train with that checkout's own code, as a user in it would; the run id."""
    run_dir = tmp_path / "runs" / uuid.uuid4().hex[:8]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    proc = subprocess.run(
        [sys.executable, "-m", "trainers.train", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("agentexp-summary: ")][-1]
    return json.loads(summary.removeprefix("agentexp-summary: "))["run_id"]


def reproduce(*args: str):
    return CliRunner().invoke(app, ["reproduce", *args])


def test_reproduce_uses_the_recorded_commit_and_diff_after_the_trainer_changed(project, tmp_path, store):
    _edit(project / "conf/optim/adamw.yaml", "lr: 1.0e-3", "lr: 5.0e-3")  # uncommitted: recorded as a diff
    run_id = train_in(project, tmp_path, *TINY_RUN)
    recorded = store.client.get_run(run_id).data
    assert recorded.tags[tracking.GIT_DIRTY] == "true"
    git.Repo(project).git.checkout("--", "conf/optim/adamw.yaml")
    head = change_the_trainer(project)
    assert head != recorded.tags[tracking.GIT_COMMIT]

    result = reproduce(run_id, "--repo", str(project), "--tolerance", "0")

    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert "in a worktree at" in lines[0] and "with the recorded diff" in lines[0]
    assert lines[1].startswith(f"best_val_acc: original {recorded.metrics['best_val_acc']:.6g}, reproduced")
    assert lines[2].startswith("data fingerprint: equal") and lines[-1] == "REPRODUCED"
    (audit_run,) = store.runs("audit")
    tags = audit_run.data.tags
    assert tags[tracking.AUDIT_OF] == run_id and tags[tracking.AUDIT_MATCH] == "true"
    assert tags[tracking.GIT_COMMIT] == recorded.tags[tracking.GIT_COMMIT]  # the recorded code ran
    assert audit_run.data.params["optim.lr"] == "0.005"  # with the recorded diff applied
    assert audit_run.data.metrics["best_val_acc"] == recorded.metrics["best_val_acc"]
    assert [r.info.run_id for r in store.runs("train")] == [run_id]  # the rerun is no training
    assert len(git.Repo(project).git.worktree("list").splitlines()) == 1  # the worktree is gone
    audit = CliRunner().invoke(app, ["audit"])
    assert (audit.exit_code, audit.output) == (0, "all 1 training runs are reproducible\n")


@pytest.mark.slow
def test_changed_code_alters_the_metric_and_a_tampered_metric_fails(project, tmp_path, store):
    run_id = train_in(project, tmp_path, *TINY_RUN)
    original = store.client.get_run(run_id).data.metrics["best_val_acc"]
    same = reproduce(run_id, "--repo", str(project))
    assert same.exit_code == 0 and "in the checkout" in same.output, same.output
    change_the_trainer(project)
    changed = store.client.get_run(train_in(project, tmp_path, *TINY_RUN)).data.metrics["best_val_acc"]
    assert changed != original  # the change would have failed a reproduction run on HEAD

    store.client.log_metric(run_id, "best_val_acc", original + 0.5)
    tampered = reproduce(run_id, "--repo", str(project))

    assert tampered.exit_code == 1
    assert tampered.output.strip().splitlines()[-1] == "NOT REPRODUCED"
    assert f"original {original + 0.5:.6g}, reproduced {original:.6g}" in tampered.output
    assert store.runs("audit")[-1].data.tags[tracking.AUDIT_MATCH] == "false"


# recorded runs without a training: the checks that come before any rerun -------------------------


def recorded_run(store, name: str = "recorded", kind: str = "train", seed: int = 42, **tags: str) -> str:
    """A run whose record looks like a finished training's, with `tags` on top."""
    experiment_id = tracking.ensure_store(store.uri, "test")
    base = {
        tracking.KIND: kind,
        tracking.GIT_COMMIT: "0" * 40,
        tracking.GIT_DIRTY: "false",
        tracking.SEED: "42",
        tracking.DATA_FINGERPRINT: "abcd",
        tracking.OVERRIDES: "[]",
    }
    run = store.client.create_run(
        experiment_id, run_name=name, tags={k: v for k, v in (base | tags).items() if v}
    )
    run_id = run.info.run_id
    store.client.log_text(run_id, yaml.safe_dump({"trainer": {"seed": seed}}), "config/resolved.yaml")
    store.client.log_metric(run_id, "best_val_acc", 0.9)
    store.client.set_terminated(run_id)
    return run_id


def one_error(result) -> str:
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and "Traceback" not in result.output
    return line


def test_unknown_run_id_is_one_clear_line(store):
    assert one_error(reproduce("nope")) == f"Error: no run nope in {store.uri}"


def test_a_run_that_is_not_a_training_is_refused(store):
    run_id = recorded_run(store, kind="decision")
    assert one_error(reproduce(run_id)) == f"Error: run {run_id} is a decision run, not a training"


def test_a_tampered_seed_fails_before_any_rerun(store, project):
    run_id = recorded_run(store, **{tracking.SEED: "7"})
    line = one_error(reproduce(run_id, "--repo", str(project)))
    assert line == f"Error: run {run_id} is inconsistent: its seed tag 7 is not its config's seed"
    assert store.runs("audit") == []


def test_a_vanished_commit_and_a_missing_checkout_are_one_line_each(store, project, tmp_path):
    run_id = recorded_run(store)
    assert one_error(reproduce(run_id, "--repo", str(project))) == (
        f"Error: commit {'0' * 40} no longer exists in {project}"
    )
    plain = tmp_path / "plain"
    plain.mkdir()
    assert one_error(reproduce(run_id, "--repo", str(plain))) == (
        f"Error: {plain} is not a git checkout (pass --repo)"
    )


def test_a_diff_that_does_not_apply_is_one_line_and_leaves_no_worktree(store, project):
    head = git.Repo(project).head.commit.hexsha
    run_id = recorded_run(store, **{tracking.GIT_COMMIT: head, tracking.GIT_DIRTY: "true"})
    store.client.log_text(
        run_id, "--- a/nowhere\n+++ b/nowhere\n@@ -1 +1 @@\n-x\n+y\n", "provenance/git_diff.patch"
    )
    line = one_error(reproduce(run_id, "--repo", str(project)))
    assert line == f"Error: the recorded diff does not apply to commit {head[:12]}"
    assert len(git.Repo(project).git.worktree("list").splitlines()) == 1


def test_a_run_without_provenance_cannot_be_reproduced(store):
    run_id = recorded_run(store, **{tracking.GIT_COMMIT: "", tracking.DATA_FINGERPRINT: ""})
    assert one_error(reproduce(run_id)) == (
        f"Error: run {run_id} cannot be reproduced: it has no git commit, no data fingerprint"
    )


def test_audit_lists_runs_lacking_provenance_and_passes_complete_ones(store):
    recorded_run(store, "complete")
    bare = recorded_run(store, "bare", **{tracking.GIT_COMMIT: "", tracking.SEED: ""})
    dirty = recorded_run(store, "dirty", **{tracking.GIT_DIRTY: "true"})
    result = CliRunner().invoke(app, ["audit"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert sorted(lines[:-1]) == sorted(
        [f"{bare} bare: no git commit, no seed", f"{dirty} dirty: no diff of its changes"]
    )
    assert lines[-1] == "2 of 3 training runs cannot be reproduced"
    for run_id in (bare, dirty):
        store.client.delete_run(run_id)
    result = CliRunner().invoke(app, ["audit"])
    assert (result.exit_code, result.output) == (0, "all 1 training runs are reproducible\n")


def test_reproduction_verdict_needs_metric_data_and_config_to_match():
    base = dict(
        run_id="r", audit_run_id="a", where="here", metric="best_val_acc", original=0.5, tolerance=0.01
    )
    assert Reproduction(**base, reproduced=0.505, fingerprints=("f", "f")).ok
    assert not Reproduction(**base, reproduced=0.52, fingerprints=("f", "f")).ok
    assert not Reproduction(**base, reproduced=0.5, fingerprints=("f", "g")).ok
    assert not Reproduction(**base, reproduced=0.5, fingerprints=("f", "f"), differences=["config x"]).ok
    assert Reproduction(**base, reproduced=None, fingerprints=("f", "f")).lines()[-1] == "NOT REPRODUCED"


def test_the_trainer_takes_its_run_kind_from_the_environment(monkeypatch):
    from trainers.config import UserError
    from trainers.train import _run_kind

    assert _run_kind() == "train"
    monkeypatch.setenv(tracking.ENV_RUN_KIND, "audit")
    assert _run_kind() == "audit"
    monkeypatch.setenv(tracking.ENV_RUN_KIND, "leaderboard")
    with pytest.raises(UserError, match="AGENTEXP_RUN_KIND='leaderboard' is not one of train, audit"):
        _run_kind()
