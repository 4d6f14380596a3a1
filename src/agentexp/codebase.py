"""Code experiments in git: the incumbent branch, one worktree and commit per experiment, keep or discard.

Everything happens in worktrees under the workspace and in branch refs: the user's checked-out branch,
index and working tree are never touched.
"""

from __future__ import annotations

import fnmatch
import logging
import shutil
from pathlib import Path, PurePosixPath
from typing import Literal

import git
from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger(__name__)

PROTECTED = (
    "src",
    "conf/gate",
    "conf/metric",
    "missions",
    "tests",
    ".git",
    ".ci",
    "pyproject.toml",
    "Makefile",
)
"""Paths no config can make editable (with the trainer's harness: trainers/ outside trainers/recipe/)."""
RECIPE = "trainers/recipe"
AUTHOR = ["-c", "user.name=agentexp", "-c", "user.email=agentexp@localhost"]


class CodeError(Exception):
    """A code experiment that cannot be made (no checkout, a patch that does not apply), in one sentence."""


def is_protected(path: str) -> bool:
    """Whether a repository path belongs to what agents never edit: the harness, agentexp, the gate..."""
    parts = PurePosixPath(path).parts
    if not parts:
        return True
    top = "/".join(parts[:2]) if parts[0] == "conf" else parts[0]
    in_harness = parts[0] == "trainers" and "/".join(parts[:2]) != RECIPE
    return top in PROTECTED or in_harness


def _literal_prefix(pattern: str) -> str:
    """The folder part of a glob before its first wildcard ('' for a pattern starting with one)."""
    head = []
    for part in PurePosixPath(pattern).parts:
        if any(c in part for c in "*?["):
            break
        head.append(part)
    return "/".join(head)


def _covers_protected(pattern: str) -> bool:
    prefix = _literal_prefix(pattern)
    roots = [*PROTECTED, "trainers/train.py"]  # a glob over all of trainers/ reaches the harness
    return is_protected(prefix) or any(root == prefix or root.startswith(prefix + "/") for root in roots)


class CodeConfig(BaseModel):
    """The `code:` section of conf/loop.yaml: what an experiment may change and how it is run and judged."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Train decisions may carry a patch."""
    editable: list[str] = [f"{RECIPE}/**"]
    """Globs of the repository paths a patch may touch."""
    max_patch_lines: int = Field(400, ge=1)
    """Added plus removed lines of one patch."""
    sandbox: Literal["auto", "bwrap", "none"] = "auto"
    """auto: bubblewrap when installed, else code experiments are refused; none: unsandboxed, knowingly."""
    preflight: bool = True
    """One train and one validation batch in the sandbox before the real training."""
    preflight_timeout_s: float = Field(300.0, gt=0)
    keep_rule: Literal["margin", "confirm"] = "confirm"
    """margin: kept when the gain exceeds the noise band plus keep_margin; confirm: a gain within that
    gets one confirmation run with another seed, and the mean of both decides."""
    keep_margin: float = Field(0.0, ge=0)
    """Gain needed beyond the measured noise band (in metric units)."""
    memory_gb: float = Field(16.0, gt=0)
    """Address-space limit of a sandboxed training."""
    cpu_time_s: int = Field(4 * 3600, gt=0)
    """CPU-time limit of a sandboxed training."""

    @field_validator("editable")
    @classmethod
    def _never_the_harness(cls, globs: list[str]) -> list[str]:
        for pattern in globs:
            if pattern.startswith("/") or ".." in PurePosixPath(pattern).parts:
                raise ValueError(f"code.editable {pattern!r} must be a path inside the repository")
            if _covers_protected(pattern):
                raise ValueError(
                    f"code.editable {pattern!r} reaches protected code (the trainer's harness, src/agentexp, "
                    "conf/gate, conf/metric, missions, tests, .git): only the recipe and your files may be"
                )
        return globs

    def allows(self, path: str) -> bool:
        """Whether a patch may touch this repository path."""
        return not is_protected(path) and any(fnmatch.fnmatch(path, g) for g in self.editable)


class Experiment(BaseModel):
    """One code experiment: a commit on its own branch, checked out in its own worktree."""

    model_config = ConfigDict(extra="forbid")

    label: str
    branch: str
    commit: str
    worktree: Path
    base: str
    """The incumbent commit it was made on."""


class Codebase:
    """The git checkout the loop runs in, seen through branch refs and worktrees only."""

    def __init__(self, repo_dir: Path, mission: str, worktrees: Path) -> None:
        try:
            self.repo = git.Repo(repo_dir, search_parent_directories=True)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise CodeError(
                f"{Path(repo_dir).resolve()} is not inside a git checkout: code experiments "
                "need one (knob decisions still work)"
            ) from None
        self.root = Path(self.repo.working_tree_dir)
        self.mission, self.worktrees = mission, Path(worktrees)
        self.best = f"agentexp/{mission}/best"

    def incumbent(self) -> str:
        """The incumbent commit. Its branch is made from HEAD the first time it is needed, and follows HEAD
        while it holds no kept experiment HEAD lacks: the checkout's new commits reach every later run."""
        head = self.repo.head.commit
        if self.best not in self.repo.heads:
            self.repo.git.branch(self.best, "HEAD")
        best = self.repo.heads[self.best].commit
        if best != head and self.repo.is_ancestor(best, head):
            self.repo.git.update_ref(f"refs/heads/{self.best}", head.hexsha, best.hexsha)
            return head.hexsha
        return best.hexsha

    def incumbent_tree(self) -> Path | None:
        """Where knob-only trainings run: None (the checkout itself) while the incumbent is HEAD, else a
        worktree of the incumbent commit."""
        if self.best not in self.repo.heads or self.incumbent() == self.repo.head.commit.hexsha:
            return None
        sha = self.incumbent()
        tree = self.worktrees / f"_incumbent-{sha[:10]}"
        if not tree.exists():
            self.repo.git.worktree("add", "--detach", str(tree), sha)
        return tree

    def files(self, cfg: CodeConfig, limit_chars: int) -> dict[str, str]:
        """The editable files at the incumbent (path -> text), cut to `limit_chars` in all."""
        tree, out, left = self.repo.commit(self.incumbent()).tree, {}, limit_chars
        for blob in tree.traverse():
            if blob.type == "blob" and cfg.allows(blob.path) and left > 0:
                text = blob.data_stream.read().decode("utf-8", errors="replace")
                out[blob.path], left = text[:left], left - len(text)
        return out

    def incumbent_diff(self, cfg: CodeConfig) -> str:
        """What the kept experiments changed so far: the incumbent against the checkout's HEAD."""
        if self.best not in self.repo.heads:
            return ""
        return self.repo.git.diff("HEAD", self.incumbent(), "--", *(f":(glob){g}" for g in cfg.editable))

    def prepare(self, label: str, cycle: int, patch: str, message: str) -> Experiment:
        """A worktree on a new branch from the incumbent, the patch applied, compiled and committed."""
        base = self.incumbent()
        branch = f"agentexp/{self.mission}/c{cycle}-{label}"
        tree = self.worktrees / label
        self._remove(tree)
        if branch in self.repo.heads:  # a cycle redone after a crash: its unfinished attempt goes
            self.repo.delete_head(branch, force=True)
        self.repo.git.worktree("add", "-b", branch, str(tree), base)
        work = git.Repo(tree)
        patch_file = tree.parent / f".{label}.patch"
        patch_file.write_text(patch if patch.endswith("\n") else patch + "\n", encoding="utf-8")
        try:
            work.git.apply("--whitespace=nowarn", str(patch_file))
            _compile_changed(work)
            work.git.add("-A")
            work.git.execute(["git", *AUTHOR, "commit", "-q", "-m", message])
        except git.GitCommandError as err:
            self.discard_branch(tree, branch)
            raise CodeError(
                f"the patch does not apply to the incumbent {base[:12]}: {_git_reason(err)}"
            ) from None
        except CodeError:
            self.discard_branch(tree, branch)
            raise
        finally:
            patch_file.unlink(missing_ok=True)
        return Experiment(
            label=label, branch=branch, commit=work.head.commit.hexsha, worktree=tree, base=base
        )

    def keep(self, exp: Experiment) -> bool:
        """Fast-forward the incumbent to the experiment (only if the incumbent did not move since)."""
        if self.incumbent() != exp.base:
            log.info("%s not kept: the incumbent moved on since it was made", exp.label)
            return False
        self.repo.git.update_ref(f"refs/heads/{self.best}", exp.commit, exp.base)
        self._remove(exp.worktree)
        return True

    def discard(self, exp: Experiment) -> None:
        """The worktree goes; the branch stays, so the run can be reproduced."""
        self._remove(exp.worktree)

    def discard_branch(self, tree: Path, branch: str) -> None:
        self._remove(tree)
        if branch in self.repo.heads:
            self.repo.delete_head(branch, force=True)

    def _remove(self, tree: Path) -> None:
        if tree.exists():
            self.repo.git.worktree("remove", "--force", str(tree))
        shutil.rmtree(tree, ignore_errors=True)
        self.repo.git.worktree("prune")


def _compile_changed(work: git.Repo) -> None:
    """Every changed .py file compiles (caught before launch, not at run time)."""
    for path in work.git.diff("--name-only", "HEAD").splitlines() + work.untracked_files:
        file = Path(work.working_tree_dir) / path
        if path.endswith(".py") and file.is_file():
            try:
                compile(file.read_text(encoding="utf-8"), path, "exec")
            except SyntaxError as err:
                raise CodeError(f"{path} does not compile: line {err.lineno}: {err.msg}") from None


def _git_reason(err: git.GitCommandError) -> str:
    lines = [line.strip() for line in str(err.stderr).splitlines() if line.strip()]
    return (lines[-1] if lines else str(err)).strip("'\" ")[:300]
