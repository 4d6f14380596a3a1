"""Provenance of a training run: git state, library versions, data fingerprints."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
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
