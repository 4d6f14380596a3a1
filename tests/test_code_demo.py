"""The shipped code demo (missions/digits/code_demo.jsonl): its patches still fit the current recipe, and
end to end a scripted loop keeps the winning patch, discards the losing one and reproduces the kept run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import git
import pytest

from agentexp import audit, gate, tracking
from agentexp.cli import build_loop
from agentexp.codebase import Codebase
from agentexp.config import compose_loop
from agentexp.decisions import WorkerDecision
from agentexp.events import CodeOutcome
from agentexp.launchers.sandbox import available

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "missions" / "digits" / "code_demo.jsonl"
COMMAND = ["llm=scripted", f"llm.script={DEMO}", "mentor.enabled=false", "loop.max_cycles=3"]
"""The demo's documented command line (docs/code_experiments.md), as overrides."""

BUILD = """
import sys, torch
from hydra import compose, initialize_config_dir
overrides = sys.argv[1].split()
for tree in sys.argv[2:]:
    sys.path.insert(0, tree)
    for name in [m for m in sys.modules if m == "trainers" or m.startswith("trainers.")]:
        del sys.modules[name]
    from trainers import recipe
    from trainers.config import CONF_DIR, from_hydra
    assert recipe.__file__.startswith(tree), recipe.__file__
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = from_hydra(compose("train", overrides=overrides))
    net = recipe.build_model(cfg, 10)
    transform = recipe.train_transform(cfg)
    images = torch.stack([transform(torch.full((3, 8, 8), i, dtype=torch.uint8)) for i in range(4)])
    logits = net(images)
    recipe.build_loss(cfg, None)(logits, torch.arange(4)).backward()
    print(tuple(logits.shape), sum(p.numel() for p in net.parameters()))
    sys.path.remove(tree)
"""


def demo() -> list[WorkerDecision]:
    lines = [line for line in DEMO.read_text().splitlines() if line.strip()]
    return [WorkerDecision.model_validate_json(json.loads(line)["raw"]) for line in lines]


def checkout_copy(dst: Path) -> git.Repo:
    """A fresh git checkout of this project's files as they are now (tracked and new; not the ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (REPO / name).is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dst / name)
    repo = git.Repo.init(dst, initial_branch="main")
    repo.git.add("-A")
    repo.git.execute(["git", "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "the project"])
    return repo


def test_the_demo_patches_pass_the_gate_apply_to_the_current_recipe_and_build(tmp_path):
    decisions = demo()
    assert [d.patch is not None for d in decisions] == [False, True, True]
    assert len({tuple(d.overrides) for d in decisions}) == 1  # the three differ in code only
    cfg = compose_loop(COMMAND)
    for d in decisions:
        assert gate.check(d, cfg.gate).violations == [], d.run_label
        assert d.patch is None or gate.check_patch(d.patch, cfg.code) == [], d.run_label
    project = checkout_copy(tmp_path / "project")
    code = Codebase(project.working_tree_dir, "digits", tmp_path / "worktrees")
    trees = [
        str(code.prepare(d.run_label, n, d.patch, "m").worktree) for n, d in enumerate(decisions) if d.patch
    ]
    overrides = " ".join(decisions[0].overrides)
    built = subprocess.run(
        [sys.executable, "-P", "-c", BUILD, overrides, *trees], capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (loser, loser_params), (winner, winner_params) = [
        line.rsplit(" ", 1) for line in built.stdout.splitlines()
    ]
    assert loser == winner == "(4, 10)"
    assert int(loser_params) == 40 and int(winner_params) > 10_000  # 3 inputs x 10 classes + 10 biases


@pytest.mark.slow
@pytest.mark.skipif(not available(), reason="bubblewrap (and prlimit) are not installed")
def test_the_demo_keeps_the_winner_discards_the_loser_and_reproduces_it(tmp_path, monkeypatch, store):
    """`agentexp loop <COMMAND>` in a checkout, then `agentexp reproduce` of the kept run."""
    project = checkout_copy(tmp_path / "project")
    head, status = project.head.commit.hexsha, project.git.status("--porcelain")
    monkeypatch.chdir(project.working_tree_dir)
    loop = build_loop(compose_loop([*COMMAND, "executor.monitor_seconds_max=3600", "loop.poll_seconds=0"]))
    loop.run()
    outcomes = {e.run_label: e for e in loop.ws.events() if isinstance(e, CodeOutcome)}
    assert {label: e.outcome for label, e in outcomes.items()} == {
        "mean-colour-linear": "discarded",
        "small-cnn-16px": "kept",
    }, [e.why for e in outcomes.values()]
    runs = {r.info.run_name: r for r in store.runs("train")}
    assert set(runs) == {"resnet18-16px-ref", "mean-colour-linear", "small-cnn-16px"}
    metric = {name: r.data.metrics["best_val_acc"] for name, r in runs.items()}
    assert metric["mean-colour-linear"] < metric["resnet18-16px-ref"] < metric["small-cnn-16px"], metric
    best = "agentexp/digits/best"
    for label, outcome in (("mean-colour-linear", "discarded"), ("small-cnn-16px", "kept")):
        tags = runs[label].data.tags
        commit = outcomes[label].commit
        assert tags[tracking.CODE_OUTCOME] == outcome and tags[tracking.CODE_COMMIT] == commit
        assert tags[tracking.GIT_COMMIT] == commit  # the training ran the experiment's own worktree
        assert project.heads[tags[tracking.CODE_BRANCH]].commit.hexsha == commit  # branch kept either way
    kept = outcomes["small-cnn-16px"].commit
    assert project.heads[best].commit.hexsha == kept
    assert "class SmallCNN" in project.git.show(f"{best}:trainers/recipe/cnn.py")
    assert not list((Path(project.working_tree_dir) / ".llm_loop" / "worktrees").glob("*-*"))
    result = audit.reproduce(store.uri, runs["small-cnn-16px"].info.run_id, Path("."), tolerance=1e-6)
    assert result.ok, result.lines()
    assert project.head.commit.hexsha == head and project.active_branch.name == "main"
    assert project.git.status("--porcelain") == status
