"""Provenance of a training run: git state, library versions, data fingerprints."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import git
from pydantic import BaseModel


class GitState(BaseModel):
    available: bool
    commit: str | None = None
    dirty: bool = False
    diff: str = ""
    reason: str = ""
    """Why no git state was recorded (e.g. an unpacked archive)."""


def git_state(root: Path) -> GitState:
    """Commit, dirty flag and diff of tracked files for the checkout at `root`."""
    try:
        repo = git.Repo(root, search_parent_directories=False)
        commit = repo.head.commit.hexsha
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return GitState(available=False, reason=f"{root} is not a git checkout")
    except ValueError:  # a fresh repository with no commit yet
        return GitState(available=False, reason=f"{root} has no commit yet")
    except git.GitCommandError as err:
        return GitState(available=False, reason=f"git failed: {err.status}")
    dirty = repo.is_dirty(untracked_files=False)
    diff = repo.git.diff("HEAD", binary=True) if dirty else ""
    return GitState(available=True, commit=commit, dirty=dirty, diff=diff)


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Installed versions of the given distributions ("missing" when not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def fingerprint(parts: Iterable[bytes | str]) -> str:
    """A short, order-sensitive SHA-256 over the given parts."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


class CheckoutError(Exception):
    """The recorded code cannot be checked out (no checkout, a vanished commit, a diff that won't apply)."""


@contextmanager
def source_tree(repo_dir: Path, commit: str, diff: str | None) -> Iterator[tuple[Path, str]]:
    """The code of `commit` (+ `diff`): the checkout itself when it is exactly that, else a temporary
    git worktree, removed afterwards. Yields the tree and where it is, in words."""
    try:
        repo = git.Repo(repo_dir, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise CheckoutError(f"{Path(repo_dir).resolve()} is not a git checkout (pass --repo)") from None
    try:  # repo.commit() accepts any 40-hex name without looking it up
        sha = repo.git.rev_parse("--verify", "--quiet", f"{commit}^{{commit}}")
    except git.GitCommandError:
        raise CheckoutError(f"commit {commit} no longer exists in {repo.working_dir}") from None
    if diff is None and repo.head.commit.hexsha == sha and not repo.is_dirty(untracked_files=False):
        yield Path(repo.working_dir), "in the checkout (HEAD is the recorded commit)"
        return
    tmp = Path(tempfile.mkdtemp(prefix="agentexp-worktree-")).resolve()
    tree = tmp / "tree"
    try:
        repo.git.worktree("add", "--detach", str(tree), sha)
        if diff is not None:
            patch = tmp / "recorded.patch"
            patch.write_text(diff, encoding="utf-8")
            try:
                git.Repo(tree).git.apply(str(patch))
            except git.GitCommandError:
                raise CheckoutError(f"the recorded diff does not apply to commit {sha[:12]}") from None
        yield tree, f"in a worktree at {sha[:12]}" + (" with the recorded diff" if diff is not None else "")
    finally:
        if tree.exists():
            repo.git.worktree("remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)
