"""The sandbox a code experiment's training runs in: bubblewrap with no network, the whole file system
(system, virtual environment, code, data) read-only, only its run folder (with its temp folder inside) and
the store writable, no secrets in its environment, and address-space / CPU-time limits (prlimit)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from agentexp import tracking

KEEP_ENV = (
    "PATH",
    "LANG",
    "LC_ALL",
    "PYTHONPATH",
    "PYTHONUNBUFFERED",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
)
"""Environment variables a sandboxed training keeps (with MLFLOW_* and AGENTEXP_*); everything else, API
keys and tokens included, stays outside."""


class SandboxError(Exception):
    """A sandbox that cannot be had, in one sentence."""


class Sandbox(BaseModel):
    """What one sandboxed process may write, and its limits."""

    model_config = ConfigDict(extra="forbid")

    writable: list[Path]
    """Folders bound read-write: the run folder first (its `tmp/` is the process's temp folder and home),
    then the sqlite store's folder."""
    memory_gb: float
    cpu_time_s: int


def available() -> bool:
    """Whether bubblewrap and prlimit are installed."""
    return shutil.which("bwrap") is not None and shutil.which("prlimit") is not None


def resolve(mode: str) -> bool:
    """Whether code experiments run sandboxed: `bwrap` demands it, `auto` takes it when installed and
    refuses code experiments otherwise, `none` opts out."""
    if mode == "none":
        return False
    if available():
        return True
    raise SandboxError(
        "code experiments need bubblewrap (apt-get install bubblewrap) to run sandboxed; "
        "install it, or set code.sandbox=none to run them unsandboxed knowingly"
    )


def store_paths(uri: str) -> list[Path]:
    """What a training must write to log to the store: a sqlite store's folder (its lock, artifacts)."""
    db = tracking.sqlite_path(uri)
    if db is None:
        raise SandboxError(f"a sandboxed training can only reach a sqlite store here, not {uri}")
    return [db.parent]


def wrap(argv: list[str], env: dict[str, str], box: Sandbox) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run `argv` inside the sandbox."""
    # CUDA reserves huge address ranges: on a GPU the address-space limit would break it, so none is set
    memory = [] if env.get("CUDA_VISIBLE_DEVICES") else [f"--as={int(box.memory_gb * 2**30)}"]
    outer = [
        "prlimit",
        f"--cpu={box.cpu_time_s}",
        *memory,
        "--",
        "bwrap",
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--unshare-net",
        "--unshare-pid",  # no --die-with-parent: like any training it outlives a killed loop
    ]  # fmt: skip
    for folder in box.writable:
        folder.mkdir(parents=True, exist_ok=True)
        outer += ["--bind", str(folder), str(folder)]
    outer += ["--chdir", os.getcwd()]
    inner = {k: v for k, v in env.items() if k in KEEP_ENV or k.startswith(("MLFLOW_", "AGENTEXP_"))}
    scratch = box.writable[0] / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    return [*outer, *argv], inner | {"HOME": str(scratch), "TMPDIR": str(scratch)}
