"""Code experiments' parts: the patch gate, git worktrees and branches, the sandbox, keep or discard."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import git
import pytest
from pydantic import ValidationError

from agentexp import gate
from agentexp.codebase import Codebase, CodeConfig, CodeError, is_protected
from agentexp.launchers.sandbox import Sandbox, available, wrap

RECIPE_LOSS = "trainers/recipe/loss.py"


def diff(path: str, old: list[str], new: list[str], header: str = "") -> str:
    """A unified diff replacing a file's `old` lines with `new` ones (a new file when `old` is empty)."""
    src = f"a/{path}" if old else "/dev/null"
    hunk = f"@@ -{1 if old else 0},{len(old)} +1,{len(new)} @@\n"
    body = "".join(f"-{line}\n" for line in old) + "".join(f"+{line}\n" for line in new)
    return f"diff --git a/{path} b/{path}\n{header}--- {src}\n+++ b/{path}\n{hunk}{body}"


CFG = CodeConfig()


@pytest.mark.parametrize(
    ("patch", "says"),
    [
        (
            diff("trainers/evaluation.py", ["x = 1"], ["x = 2"]),
            "touches trainers/evaluation.py, outside code.editable",
        ),
        (diff("conf/gate/default.yaml", ["a: 1"], ["a: 2"]), "touches conf/gate/default.yaml"),
        (diff("src/agentexp/gate.py", ["x"], ["y"]), "touches src/agentexp/gate.py"),
        (diff(".git/config", ["x"], ["y"]), "touches .git/config"),
        (diff("trainers/recipe/../train.py", ["x"], ["y"]), "names trainers/recipe/../train.py"),
        (
            diff(RECIPE_LOSS, [], ["target"], "new file mode 120000\n"),
            "makes trainers/recipe/loss.py a symlink",
        ),
        (f"diff --git a/{RECIPE_LOSS} b/{RECIPE_LOSS}\nBinary files a/x and b/x differ\n", "binary change"),
        (diff(RECIPE_LOSS, [], [f"x = {i}" for i in range(401)]), "changes 401 lines; at most 400"),
        (diff(RECIPE_LOSS, [], ["import os", "key = os.environ['OPENAI_API_KEY']"]), "use os.environ"),
        (diff(RECIPE_LOSS, [], ["import subprocess, socket"]), "use socket, subprocess"),
        (diff(RECIPE_LOSS, [], ["import mlflow"]), "use mlflow"),
        (diff(RECIPE_LOSS, [], ["from trainers.evaluation import per_class_report"]), "trainers.evaluation"),
        (diff(RECIPE_LOSS, [], ["import trainers.data as d, trainers.config"]), "use trainers.data,"),
        ("this is not a diff at all", "changes no file"),
    ],
)
def test_the_gate_refuses_what_a_patch_may_not_do_naming_the_path(patch, says):
    violations = gate.check_patch(patch, CFG)
    assert violations and says in " ".join(violations), violations


def test_the_gate_passes_a_recipe_change():
    assert (
        gate.check_patch(
            diff(
                RECIPE_LOSS,
                [],
                [
                    "import torch",
                    "from trainers.config import TrainConfig",
                    "from trainers.recipe import model",
                ],
            ),
            CFG,
        )
        == []
    )


@pytest.mark.parametrize(
    "glob",
    [
        "**",
        "*",
        "trainers/**",
        "trainers/*.py",
        "src/agentexp/**",
        "conf/gate/*",
        "conf/**",
        "missions/**",
        "tests/*",
        ".git/**",
        "/etc/*",
        "../outside/*",
    ],
)
def test_the_harness_and_the_house_can_never_be_made_editable(glob):
    with pytest.raises(ValidationError, match="code.editable"):
        CodeConfig(editable=[glob])


def test_the_default_editable_area_is_the_real_recipe_and_the_harness_stays_out():
    repo = Path(__file__).resolve().parents[1]
    recipe = sorted(str(p.relative_to(repo)) for p in (repo / "trainers" / "recipe").glob("*.py"))
    assert RECIPE_LOSS in recipe and all(CFG.allows(path) for path in recipe)
    harness = ["trainers/train.py", "trainers/data.py", "trainers/evaluation.py", "trainers/callbacks.py"]
    assert all((repo / path).is_file() and not CFG.allows(path) for path in harness + ["trainers/model.py"])


def test_your_own_files_can_be_made_editable():
    cfg = CodeConfig(editable=["trainers/recipe/**", "conf/model/*.yaml", "myproject/aug/*.py"])
    assert cfg.allows("conf/model/tiny.yaml") and cfg.allows("myproject/aug/xray.py")
    assert not cfg.allows("trainers/train.py") and is_protected("trainers/data.py")
    assert not is_protected(RECIPE_LOSS)


# ---- git: the incumbent branch, one worktree and commit per experiment ---------------------------------


@pytest.fixture
def checkout(tmp_path) -> git.Repo:
    """A project checkout with an editable recipe file and a dirty working tree of the user's own."""
    repo = git.Repo.init(tmp_path / "project", initial_branch="main")
    (tmp_path / "project" / "trainers" / "recipe").mkdir(parents=True)
    (tmp_path / "project" / RECIPE_LOSS).write_text("SMOOTHING = 0.0\n")
    (tmp_path / "project" / "README.md").write_text("mine\n")
    (tmp_path / "project" / ".gitignore").write_text(".llm_loop/\n")  # as the project's own
    repo.git.add("-A")
    repo.git.execute(["git", "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qm", "base"])
    (tmp_path / "project" / "README.md").write_text("mine, edited and not committed\n")
    return repo


def test_an_experiment_is_a_commit_on_its_branch_in_its_worktree_and_the_checkout_is_untouched(
    checkout, tmp_path
):
    head, status = checkout.head.commit.hexsha, checkout.git.status("--porcelain")
    code = Codebase(tmp_path / "project", "digits", tmp_path / "project" / ".llm_loop" / "worktrees")
    patch = diff(RECIPE_LOSS, ["SMOOTHING = 0.0"], ["SMOOTHING = 0.1"])
    exp = code.prepare("smooth01", 3, patch, "agentexp c00003-ab smooth01\n\nrationale")
    assert exp.branch == "agentexp/digits/c3-smooth01" and exp.base == head
    assert (exp.worktree / RECIPE_LOSS).read_text() == "SMOOTHING = 0.1\n"
    assert checkout.commit(exp.commit).message.startswith("agentexp c00003-ab smooth01")
    assert code.keep(exp) and code.incumbent() == exp.commit and not exp.worktree.exists()
    assert code.incumbent_tree() is not None  # knob runs now run the incumbent's code
    second = code.prepare("smooth02", 4, diff(RECIPE_LOSS, ["SMOOTHING = 0.1"], ["SMOOTHING = 0.2"]), "m")
    code.discard(second)
    assert code.incumbent() == exp.commit and second.branch in checkout.heads  # kept for reproduction
    assert checkout.head.commit.hexsha == head and checkout.active_branch.name == "main"
    assert checkout.git.status("--porcelain") == status  # the user's own edit is still there, unstaged


def test_the_incumbent_follows_the_checkout_until_it_holds_a_kept_experiment(checkout, tmp_path):
    code = Codebase(tmp_path / "project", "digits", tmp_path / "project" / ".llm_loop" / "worktrees")
    first = code.incumbent()
    commit = ["git", "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-qam", "the user's next commit"]
    (tmp_path / "project" / RECIPE_LOSS).write_text("SMOOTHING = 0.0  # new trainer code\n")
    checkout.git.execute(commit)
    assert code.incumbent() == checkout.head.commit.hexsha != first  # knob runs get the new code
    assert code.incumbent_tree() is None  # ... in the checkout itself
    old = ["SMOOTHING = 0.0  # new trainer code"]
    kept = code.prepare("smooth01", 3, diff(RECIPE_LOSS, old, ["SMOOTHING = 0.1"]), "m")
    assert code.keep(kept)
    (tmp_path / "project" / "README.md").write_text("mine, committed later\n")
    checkout.git.execute(commit)
    assert code.incumbent() == kept.commit  # a kept experiment is never dropped for the checkout's HEAD


@pytest.mark.parametrize(
    ("patch", "says"),
    [
        (diff(RECIPE_LOSS, ["SMOOTHING = 0.5"], ["SMOOTHING = 0.1"]), "does not apply"),
        (diff(RECIPE_LOSS, ["SMOOTHING = 0.0"], ["SMOOTHING = (0.1"]), "does not compile: line 1"),
    ],
)
def test_a_patch_that_does_not_apply_or_compile_is_refused_and_leaves_nothing(
    checkout, tmp_path, patch, says
):
    code = Codebase(tmp_path / "project", "digits", tmp_path / "wt")
    with pytest.raises(CodeError, match=says):
        code.prepare("broken", 1, patch, "m")
    assert not (tmp_path / "wt" / "broken").exists() and "agentexp/digits/c1-broken" not in checkout.heads


def test_two_experiments_at_once_live_in_two_worktrees(checkout, tmp_path):
    code = Codebase(tmp_path / "project", "digits", tmp_path / "wt")
    one = code.prepare("one", 1, diff(RECIPE_LOSS, ["SMOOTHING = 0.0"], ["SMOOTHING = 0.1"]), "m")
    two = code.prepare("two", 2, diff(RECIPE_LOSS, ["SMOOTHING = 0.0"], ["SMOOTHING = 0.2"]), "m")
    assert (one.worktree / RECIPE_LOSS).read_text() != (two.worktree / RECIPE_LOSS).read_text()
    assert code.keep(one) and not code.keep(two)  # the incumbent moved on since `two` was made


def test_outside_a_checkout_code_experiments_are_one_sentence(tmp_path):
    with pytest.raises(CodeError, match="is not inside a git checkout"):
        Codebase(tmp_path, "digits", tmp_path / "wt")


# ---- the sandbox ---------------------------------------------------------------------------------


HOSTILE = """
import os, socket, sys, time
out = []
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    out.append("network: reached")
except OSError as err:
    out.append(f"network: {err.__class__.__name__}")
out.append("key: " + str(os.environ.get("OPENAI_API_KEY")))
for target in (sys.argv[2], os.path.join(sys.argv[3], "ok.txt"), os.path.join(os.environ["TMPDIR"], "t")):
    try:
        open(target, "w").write("x")
        out.append(f"wrote {target}")
    except OSError as err:
        out.append(f"refused {target}: {err.strerror}")
print("\\n".join(out))
"""


@pytest.mark.skipif(not available(), reason="bubblewrap (and prlimit) are not installed")
def test_the_sandbox_has_no_network_no_keys_and_writes_only_its_folders(tmp_path, monkeypatch):
    import socketserver
    import threading

    server = socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-" + "x" * 30)
    run_dir, outside = tmp_path / "run", tmp_path / "outside.txt"
    argv, env = wrap(
        [sys.executable, "-c", HOSTILE, str(server.server_address[1]), str(outside), str(run_dir)],
        dict(os.environ),
        Sandbox(writable=[run_dir], memory_gb=8, cpu_time_s=60),
    )
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    server.shutdown()
    lines = done.stdout.splitlines()
    assert lines[0].startswith("network: ") and "reached" not in lines[0], done.stderr
    assert lines[1] == "key: None"
    assert lines[2] == f"refused {outside}: Read-only file system" and not outside.exists()
    assert lines[3] == f"wrote {run_dir / 'ok.txt'}" and lines[4].startswith("wrote ")


@pytest.mark.skipif(not available(), reason="bubblewrap (and prlimit) are not installed")
def test_a_sandboxed_process_that_never_ends_is_stopped_by_its_cpu_limit(tmp_path):
    spin = textwrap.dedent("while True:\n    pass\n")
    argv, env = wrap(
        [sys.executable, "-c", spin],
        dict(os.environ),
        Sandbox(writable=[tmp_path], memory_gb=8, cpu_time_s=1),
    )
    done = subprocess.run(argv, env=env, capture_output=True, timeout=60)
    assert done.returncode != 0  # SIGXCPU / SIGKILL at the CPU limit


def test_code_sandbox_auto_without_bubblewrap_refuses_in_one_sentence(monkeypatch, tmp_path):
    from agentexp.launchers import sandbox

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(sandbox.SandboxError, match="need bubblewrap .* code.sandbox=none"):
        sandbox.resolve("auto")
    assert sandbox.resolve("none") is False
