"""Auto-repair rules: read a failed training's log tail, plan one retry (missing module, unknown model).

The fixes come from `conf/repair/`, never from an LLM: a fallback `model.name` override, or a pip
install of a mapped package into the training venv. `trainings.py` runs the plan and the retry;
this module runs pip (and GitPython clones) from argv lists, never through a shell, each bounded by
a timeout. The issue's other path, a patched copy of a YAML run config under
`.llm_loop/autofix_configs/`, does not apply here: every loop training is driven by Hydra overrides
and no run is started from a config file, so a fix is always a new overrides list.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agentexp.launchers.base import LAUNCH_PREFIX, ActiveRun, RunOutcome

_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")
_UNSUPPORTED_MODEL = re.compile(r"Unsupported model\.name '([^']+)'")
DEFAULT_FALLBACK = "default"
"""The model_fallback_map key used for an unsupported name that has no entry of its own."""
LOG_TAIL_CHARS = 8000
"""Characters of a finished run's log read when retry_on_success looks for a failure in it."""


class RepairError(Exception):
    """A repair step (clone, install) failed; one sentence."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class CloneSpec(_Strict):
    """A git repository to clone and pip-install when a module or model is missing."""

    repo: str
    """URL or local path of the repository."""
    ref: str | None = None
    """Branch, tag or commit to check out; None = the default branch."""
    subdir: str | None = None
    """Folder inside the repository that holds the package; None = its root."""
    editable: bool = False
    """Install with `pip install -e`."""


class RepairConfig(_Strict):
    """The `repair:` section of conf/loop.yaml (conf/repair/)."""

    enabled: bool = True
    """Diagnose failed runs and retry those with a known fix once."""
    retry_on_success: bool = False
    """Also look at runs that finished; false: a finished run is never retried."""
    allow_direct_module_install: bool = False
    """Install an unmapped missing module under its (aliased) name."""
    python_exe: str | None = None
    """Interpreter whose environment pip installs into; None = the executor's."""
    pip_args: list[str] = ["--no-index", "--no-build-isolation"]
    """Arguments after `pip install`, before the requirement."""
    install_timeout_s: float = Field(600.0, gt=0)
    """Seconds one install or clone may take."""
    module_package_map: dict[str, str] = {}
    """Missing module -> pip requirement or local path."""
    module_alias_map: dict[str, str] = {}
    """Import name -> distribution name, for direct installs."""
    module_clone_map: dict[str, CloneSpec] = {}
    """Missing module -> repository to clone and install."""
    model_package_map: dict[str, str] = {}
    """Unsupported model name -> pip requirement or local path that provides it."""
    model_clone_map: dict[str, CloneSpec] = {}
    """Unsupported model name -> repository to clone and install."""
    model_fallback_map: dict[str, str] = {}
    """Unsupported model name -> a supported one; the `default` key for any other name."""


class Failure(_Strict):
    """A failure with a known kind of fix, read from a log tail."""

    kind: Literal["missing_module", "unsupported_model"]
    name: str
    """The missing module or the unsupported model name."""


class Repair(_Strict):
    """What to do before the retry, and the retry's overrides."""

    action: Literal["fallback_model", "install", "clone_install"]
    overrides: list[str]
    """The retry's Hydra overrides."""
    requirement: str | None = None
    """What pip installs: a requirement or a local path (install)."""
    clone: CloneSpec | None = None
    """What is cloned and installed (clone_install)."""


class Attempt(_Strict):
    """One repair pass over a failed run: the diagnosis, the plan, and why it stopped short if it did."""

    failure: Failure
    repair: Repair | None = None
    """None: no fix is configured for this failure."""
    error: str | None = None
    """Why no retry follows (no fix configured, or the install failed)."""

    @property
    def retry(self) -> bool:
        return self.repair is not None and self.error is None

    def tags(self) -> dict[str, str]:
        """The decision run's `agentexp.repair.*` tags."""
        tags = {
            "agentexp.repair.failure": f"{self.failure.kind}: {self.failure.name}",
            "agentexp.repair.action": self.repair.action if self.repair else "none",
            "agentexp.repair.retried": str(self.retry).lower(),
        }
        if self.repair:
            tags["agentexp.repair.overrides"] = " ".join(self.repair.overrides)
            if what := self.repair.requirement or (self.repair.clone and self.repair.clone.repo):
                tags["agentexp.repair.package"] = what
        if self.error:
            tags["agentexp.repair.error"] = self.error
        return tags


def diagnose(error_tail: str) -> Failure | None:
    """The last known failure named in a log tail, or None."""
    found = [
        (match.start(), Failure(kind=kind, name=match.group(1)))
        for kind, pattern in (("missing_module", _MISSING_MODULE), ("unsupported_model", _UNSUPPORTED_MODEL))
        for match in pattern.finditer(error_tail)
    ]
    return max(found, key=lambda item: item[0])[1] if found else None


def plan(failure: Failure, cfg: RepairConfig, overrides: list[str]) -> Repair | None:
    """The fix configured for a failure, or None; a fallback model is preferred to an install."""
    if failure.kind == "unsupported_model":
        return _plan_model(failure.name, cfg, overrides)
    return _plan_module(failure.name, cfg, overrides)


def _plan_model(name: str, cfg: RepairConfig, overrides: list[str]) -> Repair | None:
    fallback = cfg.model_fallback_map.get(name)
    if fallback is None and name in cfg.model_package_map:
        return Repair(action="install", overrides=overrides, requirement=cfg.model_package_map[name])
    if fallback is None and name in cfg.model_clone_map:
        return Repair(action="clone_install", overrides=overrides, clone=cfg.model_clone_map[name])
    fallback = fallback or cfg.model_fallback_map.get(DEFAULT_FALLBACK)
    if not fallback or fallback == name:
        return None
    kept = [o for o in overrides if o.split("=", 1)[0].strip() != "model.name"]
    return Repair(action="fallback_model", overrides=[*kept, f"model.name={fallback}"])


def _plan_module(name: str, cfg: RepairConfig, overrides: list[str]) -> Repair | None:
    for module in dict.fromkeys([name, name.split(".")[0]]):  # `a.b` may be mapped as itself or as `a`
        if module in cfg.module_package_map:
            return Repair(action="install", overrides=overrides, requirement=cfg.module_package_map[module])
        if module in cfg.module_clone_map:
            return Repair(action="clone_install", overrides=overrides, clone=cfg.module_clone_map[module])
    if cfg.allow_direct_module_install:
        top = name.split(".")[0]
        return Repair(action="install", overrides=overrides, requirement=cfg.module_alias_map.get(top, top))
    return None


def interpreter(cfg: RepairConfig, executor_python: str | None) -> str:
    """The interpreter pip installs for: repair.python_exe, else the executor's, else this one."""
    return cfg.python_exe or executor_python or sys.executable


def attempt(
    run: ActiveRun, outcome: RunOutcome, cfg: RepairConfig, python_exe: str, src_root: Path
) -> Attempt | None:
    """Diagnose a first attempt that ended, plan its fix and run the install step; None: not repairable."""
    if not cfg.enabled or run.attempt != 1 or outcome.status == "killed":
        return None
    if outcome.status == "finished" and not cfg.retry_on_success:
        return None
    failure = diagnose(outcome.error_tail or _log_tail(run.log_path))
    if failure is None:
        return None
    fix = plan(failure, cfg, run.overrides)
    if fix is None:
        return Attempt(failure=failure, error=f"no repair configured for {failure.kind} '{failure.name}'")
    try:
        prepare(fix, cfg, python_exe, src_root)
    except RepairError as err:
        return Attempt(failure=failure, repair=fix, error=str(err))
    return Attempt(failure=failure, repair=fix)


def prepare(fix: Repair, cfg: RepairConfig, python_exe: str, src_root: Path) -> None:
    """Run the fix's install step (nothing for a fallback model)."""
    if fix.requirement:
        install([fix.requirement], python_exe, cfg.pip_args, cfg.install_timeout_s)
    elif fix.clone:
        path = str(clone(fix.clone, src_root, cfg.install_timeout_s))
        targets = ["-e", path] if fix.clone.editable else [path]
        install(targets, python_exe, cfg.pip_args, cfg.install_timeout_s)


def install(targets: list[str], python_exe: str, pip_args: list[str], timeout_s: float) -> None:
    """`python_exe -m pip install` from an argv list; a failure is a RepairError in one line."""
    argv = [python_exe, "-m", "pip", "install", *pip_args, *targets]
    what = " ".join(targets)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise RepairError(f"pip install {what} took longer than {timeout_s:g}s") from None
    except OSError as err:
        raise RepairError(f"could not run pip with {python_exe}: {err.strerror}") from None
    if done.returncode != 0:
        raise RepairError(f"pip install {what} failed: {_last_error_line(done.stderr or done.stdout)}")


def clone(spec: CloneSpec, src_root: Path, timeout_s: float) -> Path:
    """Clone (or reuse) the repository under src_root, check out its ref; the package folder."""
    import git  # GitPython: imported here so the loop starts without touching git

    name = spec.repo.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    target = src_root / re.sub(r"[^\w.-]+", "_", name)
    try:
        if target.exists():
            repo = git.Repo(target)
        else:
            repo = git.Repo.clone_from(spec.repo, target, kill_after_timeout=timeout_s)
        if spec.ref:
            repo.git.checkout(spec.ref)
    except git.GitError as err:
        raise RepairError(f"could not clone {spec.repo}: {_last_error_line(str(err))}") from None
    path = target / spec.subdir if spec.subdir else target
    if not path.is_dir():
        raise RepairError(f"{spec.repo} has no folder {spec.subdir}")
    return path


def _log_tail(path: Path) -> str:
    """The end of the log's latest launch (a reused label appends to the same log)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return text.rsplit(LAUNCH_PREFIX, 1)[-1][-LOG_TAIL_CHARS:]


def _last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if "error" in line.lower()]
    return (named or lines or ["no output"])[-1][:300]
