"""Auto-repair: diagnosis and plans as tables, then real failed runs retried once through the loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import git
import pytest
from helpers import FAST_TRAINING, decision, run_loop

from agentexp import repair, tracking
from agentexp.config import compose_loop
from agentexp.launchers.base import LAUNCH_PREFIX
from agentexp.repair import CloneSpec, Failure, RepairConfig, RepairError

FAKE_TRAINER = """
import json, os, sys

args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
model = args.get("model.name", "resnet18")
if model not in ("resnet18", "efficientnet_b0"):
    sys.exit(f"trainers.config.UserError: Unsupported model.name '{model}': not a timm model")
if os.environ.get("FAKE_NEEDS"):
    value = __import__(os.environ["FAKE_NEEDS"]).VALUE
else:
    value = 0.5
print(os.environ.get("FAKE_SAYS", "training"))
print("agentexp-summary: " + json.dumps({"best": value, "run_id": None, "model": model}))
"""

TINY_PACKAGE = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "tinypkg"
        version = "0.1"
    """,
    "tinypkg/__init__.py": "VALUE = 0.75\n",
}


# ---- diagnose and plan -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (
            "Traceback (most recent call last):\nModuleNotFoundError: No module named 'cv2'",
            ("missing_module", "cv2"),
        ),
        ("ModuleNotFoundError: No module named 'timm_extra.layers'", ("missing_module", "timm_extra.layers")),
        (
            "Error: Unsupported model.name 'efficientnetv2_rw_tt': not a timm model "
            "(close matches: efficientnetv2_rw_t)",
            ("unsupported_model", "efficientnetv2_rw_tt"),
        ),
        (  # the last failure named is the one that ended the run
            "ModuleNotFoundError: No module named 'a'\nUnsupported model.name 'b': not a timm model",
            ("unsupported_model", "b"),
        ),
        ("RuntimeError: CUDA out of memory", None),
        ("ImportError: cannot import name 'x' from 'y'", None),
        ("", None),
    ],
    ids=["module", "dotted-module", "unknown-model", "last-wins", "oom", "import-error", "empty"],
)
def test_diagnose(tail, expected):
    found = repair.diagnose(tail)
    assert (found and (found.kind, found.name)) == expected


CFG = RepairConfig(
    module_package_map={"tinypkg": "/wheels/tinypkg-0.1-py3-none-any.whl", "timm_extra": "timm-extra==1.0"},
    module_alias_map={"cv2": "opencv-python-headless"},
    module_clone_map={"gitpkg": CloneSpec(repo="https://example.invalid/gitpkg.git", ref="v1")},
    model_package_map={"fancynet": "fancy-models", "efficientnetv2_rw_t": "should-not-win"},
    model_fallback_map={"efficientnetv2_rw_t": "efficientnet_b0", "default": "resnet18"},
)
BASE = ["trainer.epochs=1", "model.name=bogus", "optim.lr=0.01"]


@pytest.mark.parametrize(
    ("failure", "cfg", "action", "overrides", "requirement"),
    [
        (  # an explicit fallback beats an install; the model override is replaced, not duplicated
            ("unsupported_model", "efficientnetv2_rw_t"),
            CFG,
            "fallback_model",
            ["trainer.epochs=1", "optim.lr=0.01", "model.name=efficientnet_b0"],
            None,
        ),
        (("unsupported_model", "fancynet"), CFG, "install", BASE, "fancy-models"),
        (
            ("unsupported_model", "nonet"),
            CFG,
            "fallback_model",
            ["trainer.epochs=1", "optim.lr=0.01", "model.name=resnet18"],
            None,
        ),
        (("unsupported_model", "nonet"), RepairConfig(), None, None, None),
        (("unsupported_model", "resnet18"), CFG, None, None, None),  # the fallback itself is not supported
        (("missing_module", "tinypkg"), CFG, "install", BASE, "/wheels/tinypkg-0.1-py3-none-any.whl"),
        (("missing_module", "timm_extra.layers"), CFG, "install", BASE, "timm-extra==1.0"),
        (("missing_module", "gitpkg"), CFG, "clone_install", BASE, None),
        (("missing_module", "cv2"), CFG, None, None, None),  # unmapped: no blind install by default
        (
            ("missing_module", "cv2.data"),
            CFG.model_copy(update={"allow_direct_module_install": True}),
            "install",
            BASE,
            "opencv-python-headless",
        ),
    ],
    ids=[
        "explicit-fallback-beats-install",
        "model-package",
        "default-fallback",
        "nothing-configured",
        "fallback-unsupported-too",
        "module-package",
        "dotted-module-by-top-level",
        "module-clone",
        "no-blind-install",
        "direct-install-by-alias",
    ],
)
def test_plan(failure, cfg, action, overrides, requirement):
    fix = repair.plan(Failure(kind=failure[0], name=failure[1]), cfg, BASE)
    if action is None:
        assert fix is None
        return
    assert (fix.action, fix.overrides, fix.requirement) == (action, overrides, requirement)
    if action == "clone_install":
        assert fix.clone.ref == "v1"


def test_the_loop_config_composes_the_repair_defaults(tmp_path):
    cfg = compose_loop([f"loop.workspace={tmp_path}"]).repair
    assert cfg.enabled and not cfg.retry_on_success and not cfg.allow_direct_module_install
    assert cfg.model_fallback_map["default"] == "resnet18" and "--no-index" in cfg.pip_args
    off = compose_loop([f"loop.workspace={tmp_path}", "repair.enabled=false"]).repair
    assert not off.enabled


def test_a_failed_install_is_one_line(tmp_path):
    with pytest.raises(RepairError, match=r"^pip install .*nothing-here failed: [^\n]+$"):
        repair.install([str(tmp_path / "nothing-here")], sys.executable, ["--no-index"], 60)
    with pytest.raises(RepairError, match="could not run pip with"):
        repair.install(["x"], str(tmp_path / "no-python"), [], 60)


# ---- real installs -----------------------------------------------------------------------------


def write_package(root: Path) -> Path:
    for name, text in TINY_PACKAGE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def venv(tmp_path) -> Path:
    """A throwaway training venv; pip and setuptools come from this interpreter, like system packages."""
    root = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    (Path(site) / "_host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def imports(python: Path, module: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0


def test_a_cloned_package_is_installed_into_the_venv(tmp_path, venv):
    source = write_package(tmp_path / "origin" / "pkg")
    origin = git.Repo.init(tmp_path / "origin")
    origin.index.add([str(p) for p in source.rglob("*") if p.is_file()])
    origin.index.commit("tiny package")
    origin.create_tag("v1")
    spec = CloneSpec(repo=str(tmp_path / "origin"), ref="v1", subdir="pkg", editable=True)
    fix = repair.plan(
        Failure(kind="missing_module", name="tinypkg"), RepairConfig(module_clone_map={"tinypkg": spec}), []
    )
    assert not imports(venv, "tinypkg")
    repair.prepare(fix, RepairConfig(), str(venv), tmp_path / ".llm_loop" / "repair_src")
    assert (tmp_path / ".llm_loop" / "repair_src" / "origin" / "pkg" / "pyproject.toml").is_file()
    assert imports(venv, "tinypkg")


# ---- through the loop --------------------------------------------------------------------------


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
    """`python -m fake_trainer` for the loop's children."""
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    (fakes / "fake_trainer.py").write_text(textwrap.dedent(FAKE_TRAINER))
    monkeypatch.setenv("PYTHONPATH", str(fakes), prepend=os.pathsep)
    return ["executor.trainer_module=fake_trainer", "executor.poll_interval_s=0.05"]


def events(ws, name: str) -> list[dict]:
    return [e.model_dump(mode="json") for e in ws.events() if e.event == name]


def launches(ws, label: str = "resnet18-lr2e-3") -> list[dict]:
    lines = ws.log_path(label).read_text().splitlines()
    return [json.loads(x.removeprefix(LAUNCH_PREFIX)) for x in lines if x.startswith(LAUNCH_PREFIX)]


def test_an_unknown_model_is_retried_once_with_the_fallback_and_finishes(tmp_path, store):
    bad_model = FAST_TRAINING.replace("]", ",'model.name=efficientnetv2_rw_tt']")
    reason, ws = run_loop(tmp_path, [decision()], "loop.max_cycles=1", bad_model)
    assert reason == "max_cycles"
    (fix,) = events(ws, "auto_repair")
    assert fix["failure"] == {"kind": "unsupported_model", "name": "efficientnetv2_rw_tt"}
    assert fix["repair"]["action"] == "fallback_model"
    assert fix["repair"]["overrides"][-1] == "model.name=resnet18"
    (retry,) = events(ws, "run_outcome_retry")
    assert retry["run"]["status"] == "finished", retry["run"]["error_tail"]
    assert [launch["attempt"] for launch in launches(ws)] == [1, 2]
    (decision_run,) = store.runs("decision")
    finished = [r for r in store.runs("train") if r.info.status == "FINISHED"]
    assert [r.data.params["model.name"] for r in finished] == ["resnet18"]
    assert finished[0].data.tags[tracking.PARENT_RUN_ID] == decision_run.info.run_id
    tags = decision_run.data.tags
    assert tags["agentexp.repair.action"] == "fallback_model" and tags["agentexp.repair.retried"] == "true"
    assert tags["agentexp.repair.retry_status"] == "finished"
    assert ws.load_state().active_runs == []


def test_a_missing_module_is_installed_into_the_training_venv_and_the_retry_succeeds(
    tmp_path, store, venv, fake_trainer, monkeypatch
):
    monkeypatch.setenv("FAKE_NEEDS", "tinypkg")
    package = write_package(tmp_path / "tinypkg-src")
    reason, ws = run_loop(
        tmp_path,
        [decision()],
        "loop.max_cycles=1",
        *fake_trainer,
        f"executor.python_exe={venv}",
        f"+repair.module_package_map.tinypkg='{package}'",
    )
    (fix,) = events(ws, "auto_repair")
    assert fix["repair"]["requirement"] == str(package) and fix["error"] is None
    (retry,) = events(ws, "run_outcome_retry")
    assert retry["run"]["status"] == "finished" and retry["run"]["metric"] == 0.75
    assert imports(venv, "tinypkg") and not imports(Path(sys.executable), "tinypkg")
    (decision_run,) = store.runs("decision")
    assert decision_run.data.tags["agentexp.repair.package"] == str(package)


@pytest.mark.parametrize(
    ("extra", "auto_repairs", "retried"),
    [
        (["repair.model_fallback_map={default: alexnet_typo}"], 1, True),  # the fallback fails too
        (["~repair.model_fallback_map.default"], 1, False),  # recognised, nothing configured: evidence only
        (["repair.enabled=false"], 0, False),
    ],
    ids=["second-failure", "no-fix-configured", "disabled"],
)
def test_a_failure_is_retried_at_most_once(tmp_path, store, fake_trainer, extra, auto_repairs, retried):
    bad_model = "loop.train_overrides=['model.name=bogusnet']"
    _, ws = run_loop(tmp_path, [decision()], "loop.max_cycles=1", *fake_trainer, bad_model, *extra)
    fixes = events(ws, "auto_repair")
    assert [(f["failure"]["name"], f["retried"]) for f in fixes] == [("bogusnet", retried)] * auto_repairs
    assert [launch["attempt"] for launch in launches(ws)] == ([1, 2] if retried else [1])
    retries = events(ws, "run_outcome_retry")
    assert [r["run"]["status"] for r in retries] == (["failed"] if retried else [])
    assert [e["run"]["status"] for e in events(ws, "run_end")] == ["failed"] * len(launches(ws))
    if auto_repairs and not retried:
        assert fixes[0]["error"] == "no repair configured for unsupported_model 'bogusnet'"


@pytest.mark.parametrize("retry_on_success", [False, True])
def test_a_finished_run_is_retried_only_with_retry_on_success(
    tmp_path, store, fake_trainer, monkeypatch, retry_on_success
):
    monkeypatch.setenv("FAKE_SAYS", "warning: Unsupported model.name 'fancynet', fell back to a stub")
    flag = f"repair.retry_on_success={str(retry_on_success).lower()}"
    _, ws = run_loop(tmp_path, [decision()], "loop.max_cycles=1", *fake_trainer, flag)
    assert [launch["attempt"] for launch in launches(ws)] == ([1, 2] if retry_on_success else [1])
    assert len(events(ws, "auto_repair")) == retry_on_success
    assert all(e["run"]["status"] == "finished" for e in events(ws, "run_end"))
