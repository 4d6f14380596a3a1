"""Fresh reset: archive or delete the workspace, keep the login and the data link on request, purge MLflow."""

from __future__ import annotations

import os

from agentexp import tracking
from agentexp.workspace import Workspace, WorkspaceError

CODEX_HOME = "codex_home"
"""The Codex login the codex backend keeps in the workspace (`agentexp login`)."""
DATA_LINK = "data"
"""The data link made by `agentexp link-data`."""


def reset(
    ws: Workspace,
    keep_login: bool = False,
    keep_data_link: bool = False,
    purge: bool = False,
    store: tuple[str, str] | None = None,
) -> list[str]:
    """Reset the workspace; with `purge`, delete it and the runs of `store` = (uri, experiment) too.

    Returns what was done, one line per step. Refuses while the loop runs; stops nothing.
    """
    if (pid := ws.holder_pid()) is not None:
        raise WorkspaceError(
            f"the loop is running in {ws.root} (pid {pid}): stop it first (agentexp stop --wait)"
        )
    if purge and store is None:
        raise ValueError("purge needs the store and experiment whose runs it deletes")
    wanted = [name for name, keep in ((CODEX_HOME, keep_login), (DATA_LINK, keep_data_link)) if keep]
    lines = []
    if not ws.root.exists():
        lines.append(f"{ws.root} does not exist: nothing to reset there")
    else:
        dest = ws.reset(archive=not purge, keep=wanted)
        kept = [name for name in wanted if os.path.lexists(ws.root / name)]
        note = f"; kept {' and '.join(kept)} in the fresh workspace" if kept else ""
        lines.append(f"deleted {ws.root}{note}" if dest is None else f"archived {ws.root} to {dest}{note}")
    if not purge:
        lines.append("MLflow history kept")
        return lines
    uri, experiment = store
    runs, traces = tracking.delete_experiment_runs(uri, experiment)
    lines.append(
        f"deleted {runs} MLflow runs and {traces} traces of experiment {experiment!r} in {uri}"
        f" (other experiments untouched; `mlflow gc --backend-store-uri {uri}` frees their space)"
    )
    return lines
