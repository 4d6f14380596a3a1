"""Reproducibility: rerun a training from its recorded provenance (`reproduce`), list runs lacking it.

The rerun goes through trainings.py like every training: the same command line and environment builders,
the same local launcher, with the recorded code tree first on the path.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agentexp import tracking
from agentexp.codebase import CodeConfig
from agentexp.launchers.base import LaunchSpec, run_to_end, training_argv, training_env
from agentexp.launchers.local import LocalLauncher
from agentexp.launchers.sandbox import Sandbox, store_paths
from agentexp.provenance import source_tree

RESOLVED = "config/resolved.yaml"
DIFF = "provenance/git_diff.patch"
IGNORED = ("run_label", "tracking.")
"""Config keys that name or place a run: a reproduction may differ there."""
TAGS = (tracking.GIT_COMMIT, tracking.GIT_DIRTY, tracking.GIT_DIFF_ARTIFACT, tracking.SEED)
TAGS += (tracking.DATA_FINGERPRINT, tracking.OVERRIDES)


class AuditError(Exception):
    """A run that cannot be reproduced, or input a user can fix, in one sentence."""


def gaps(tags: dict[str, str], artifacts: set[str]) -> list[str]:
    """What a training run lacks to be reproduced; empty when nothing."""
    dirty = tags.get(tracking.GIT_DIRTY) == "true"
    checks = {
        "git commit": bool(tags.get(tracking.GIT_COMMIT)),
        "diff of its changes": not dirty or tags.get(tracking.GIT_DIFF_ARTIFACT, DIFF) in artifacts,
        "resolved config": RESOLVED in artifacts,
        "recorded overrides": tracking.OVERRIDES in tags,
        "seed": bool(tags.get(tracking.SEED)),
        "data fingerprint": bool(tags.get(tracking.DATA_FINGERPRINT)),
    }
    return [name for name, present in checks.items() if not present]


def _artifacts(uri: str, run_id: str) -> set[str]:
    return tracking.artifact_paths(uri, run_id, "config") | tracking.artifact_paths(uri, run_id, "provenance")


def audit(uri: str, experiment: str) -> tuple[int, list[str]]:
    """(finished training runs, one line per run lacking provenance needed to reproduce it)."""
    experiment_id = tracking.find_experiment(uri, experiment)
    if experiment_id is None:
        raise AuditError(f"no experiment {experiment!r} in {uri}")
    rows = tracking.run_table(uri, experiment_id, "train", tags=TAGS)
    rows = [row for row in rows if row["status"] == "FINISHED"]
    lines = []
    for row in rows:
        if missing := gaps(row["tags"], _artifacts(uri, row["run_id"])):
            lines.append(f"{row['run_id']} {row['run_name']}: no {', no '.join(missing)}")
    return len(rows), lines


@dataclass(frozen=True)
class Reproduction:
    """A training and its rerun, side by side."""

    run_id: str
    audit_run_id: str
    where: str
    metric: str
    original: float
    reproduced: float | None
    tolerance: float
    fingerprints: tuple[str, str | None]
    differences: list[str] = field(default_factory=list)
    """Config values or the commit where the rerun differs from the run."""

    @property
    def ok(self) -> bool:
        close = self.reproduced is not None and abs(self.reproduced - self.original) <= self.tolerance
        return close and self.fingerprints[0] == self.fingerprints[1] and not self.differences

    def lines(self) -> list[str]:
        now, gap = "missing", ""
        if self.reproduced is not None:
            now, gap = f"{self.reproduced:.6g}", f", |diff| {abs(self.reproduced - self.original):.3g}"
        (old, new), tolerance = self.fingerprints, self.tolerance
        data = f"equal ({old})" if old == new else f"DIFFERS ({old} then, {new} now)"
        return [
            f"reran {self.run_id} {self.where} as audit run {self.audit_run_id}",
            f"{self.metric}: original {self.original:.6g}, reproduced {now}{gap} (tolerance {tolerance:g})",
            f"data fingerprint: {data}",
            *(f"differs: {line}" for line in self.differences),
            "REPRODUCED" if self.ok else "NOT REPRODUCED",
        ]


def reproduce(uri: str, run_id: str, repo_dir: Path, tolerance: float, python: str = sys.executable):
    """Rerun a training from what MLflow recorded and compare; the rerun is an `audit` run linked to it.

    The code is the recorded commit (a temporary git worktree unless the checkout is exactly there) plus
    the recorded diff of a dirty run; the trainer runs in the current directory, so relative data paths
    resolve as they did for a loop started here.
    """
    run = tracking.get_run(uri, run_id)
    if run is None:
        raise AuditError(f"no run {run_id} in {uri}")
    tags, kind = run["tags"], run["tags"].get(tracking.KIND, "untagged")
    if kind != "train":
        raise AuditError(f"run {run_id} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} run, not a training")
    metric = next((k for k in run["metrics"] if k.startswith("best_")), None)
    if metric is None:
        raise AuditError(f"run {run_id} ({run['status']}) has no best_* metric to compare")
    if missing := gaps(tags, _artifacts(uri, run_id)):
        raise AuditError(f"run {run_id} cannot be reproduced: it has no {', no '.join(missing)}")
    recorded = yaml.safe_load(tracking.read_text_artifact(uri, run_id, RESOLVED) or "{}")
    seed, commit = tags[tracking.SEED], tags[tracking.GIT_COMMIT]
    if str(recorded.get("trainer", {}).get("seed")) != seed:
        raise AuditError(f"run {run_id} is inconsistent: its seed tag {seed} is not its config's seed")
    diff = None
    if tags.get(tracking.GIT_DIRTY) == "true":
        diff = tracking.read_text_artifact(uri, run_id, tags.get(tracking.GIT_DIFF_ARTIFACT, DIFF))
    overrides = json.loads(tags[tracking.OVERRIDES]) + [f"trainer.seed={seed}"]
    with source_tree(repo_dir, commit, diff) as (tree, where):
        audit_id = _rerun(
            python, tree, uri, run["experiment"], overrides, of=run_id, code=tags.get(tracking.CODE_COMMIT)
        )
    rerun = tracking.get_run(uri, audit_id)
    differences = _config_differences(recorded, tracking.read_text_artifact(uri, audit_id, RESOLVED))
    if (again := rerun["tags"].get(tracking.GIT_COMMIT)) != commit:
        differences.append(f"git commit {again} now, {commit} then")
    result = Reproduction(
        run_id=run_id,
        audit_run_id=audit_id,
        where=where,
        metric=metric,
        original=run["metrics"][metric],
        reproduced=rerun["metrics"].get(metric),
        tolerance=tolerance,
        fingerprints=(tags[tracking.DATA_FINGERPRINT], rerun["tags"].get(tracking.DATA_FINGERPRINT)),
        differences=differences,
    )
    tracking.set_tags(uri, audit_id, {tracking.AUDIT_MATCH: str(result.ok).lower()})
    return result


def _config_differences(before: dict, after_text: str | None) -> list[str]:
    old, new = _flat(before), _flat(yaml.safe_load(after_text or "{}"))
    keys = sorted(k for k in old.keys() | new.keys() if not k.startswith(IGNORED))
    return [f"config {k}: {new.get(k)!r} now, {old.get(k)!r} then" for k in keys if old.get(k) != new.get(k)]


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _rerun(
    python: str, tree: Path, uri: str, experiment: str, overrides: list[str], of: str, code: str | None
) -> str:
    """Run the trainer of `tree` to its end as an audit run; its run id. A code experiment's training
    (`code`: its commit) reruns in the same sandbox it ran in."""
    tmp = Path(tempfile.mkdtemp(prefix="agentexp-reproduce-")).resolve()
    run_dir, label = tmp / "run", f"audit-{of[:8]}"
    env = training_env(uri, experiment, kind="audit", code_dir=tree)
    box = None
    if code is not None:
        env[tracking.ENV_CODE_COMMIT] = code
        limits = CodeConfig()
        box = Sandbox(
            writable=[run_dir, *store_paths(uri)], memory_gb=limits.memory_gb, cpu_time_s=limits.cpu_time_s
        )
    spec = LaunchSpec(
        run_label=label,
        argv=training_argv(python, "trainers.train", overrides, label, run_dir, code_dir=tree),
        env=env,
        log_path=tmp / "rerun.log",
        run_dir=run_dir,
        sandbox=box,
    )
    try:
        outcome = run_to_end(LocalLauncher(stop_grace_s=30.0), spec)
        run_id = tracking.find_run_by_tag(uri, experiment, tracking.RUN_DIR, str(run_dir))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if run_id is not None:  # tagged here too: a trainer older than AGENTEXP_RUN_KIND tags its run `train`
        tracking.set_tags(uri, run_id, {tracking.KIND: "audit", tracking.AUDIT_OF: of})
    if outcome.status != "finished" or run_id is None:
        last = (outcome.error_tail.strip().splitlines() or ["no output"])[-1]
        raise AuditError(f"the rerun failed (exit {outcome.returncode}): {last}")
    return run_id
