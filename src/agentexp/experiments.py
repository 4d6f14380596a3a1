"""Code experiments in the loop: a patch checked, committed and preflighted before its training, and the
training judged against the incumbent afterwards (kept beyond the noise band, confirmed within it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agentexp import gate, noise, ranking, tracking
from agentexp.codebase import Codebase, CodeConfig, CodeError, Experiment
from agentexp.decisions import WorkerDecision
from agentexp.events import CodeOutcome, LaunchIntent
from agentexp.launchers import sandbox
from agentexp.launchers.base import ActiveRun, RunOutcome

SMOKE = ["trainer.epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
"""What a preflight trains: one train batch and one validation batch."""
FILES_CHARS = 12_000
"""Characters of the editable files the worker's prompt shows."""


@dataclass(frozen=True)
class Verdict:
    outcome: str
    """kept, discarded, failed or confirming."""
    why: str


class Experiments:
    """What the loop and its trainings need to know about code: where a run's code is, whether it is
    sandboxed, how a patch becomes a commit, and whether an experiment stays."""

    def __init__(self, cfg: CodeConfig, codebase: Codebase | None, metric: str, direction: str) -> None:
        self.cfg, self.codebase, self.metric, self.direction = cfg, codebase, metric, direction
        self._view: tuple[str, dict] = ("", {})

    # before the training ---------------------------------------------------------------------------

    def refusals(self, decision: WorkerDecision) -> list[str]:
        """Why a decision's patch may not run, one sentence each ([] for a knob-only decision)."""
        if decision.patch is None:
            return []
        if not self.cfg.enabled:
            return ["Code experiments are off (code.enabled=false): send overrides only."]
        if self.codebase is None:
            return ["Code experiments need a git checkout around the workspace: send overrides only."]
        try:
            sandbox.resolve(self.cfg.sandbox)
        except sandbox.SandboxError as err:
            return [f"{err}."]
        return gate.check_patch(decision.patch, self.cfg)

    def prepare(self, decision: WorkerDecision, cycle: int, trace: str) -> Experiment:
        """The experiment's commit in its worktree (CodeError: does not apply or compile)."""
        message = (
            f"agentexp {trace} {decision.run_label}\n\n{decision.rationale}\n\ncycle_trace_id: {trace}\n"
        )
        return self.codebase.prepare(decision.run_label, cycle, decision.patch, message)

    def vet(self, decision: WorkerDecision, cycle: int, trace: str, overrides: list[str], preflight):
        """A patch made into a preflighted experiment: (experiment, [], "") or (None, the reasons it may not
        run, the preflight's log tail when that is the reason)."""
        if refused := self.refusals(decision):
            return None, refused, ""
        try:
            exp = self.prepare(decision, cycle, trace)
        except CodeError as err:
            return None, [f"The patch was refused: {err}."], ""
        failed = preflight(decision.run_label, overrides, trace, exp) if self.cfg.preflight else None
        if failed is not None:
            self.codebase.discard(exp)
            last = (failed.error_tail.strip().splitlines() or [failed.status])[-1]
            return (
                None,
                [f"The patched recipe failed its one-batch preflight: {last[:300]}"],
                failed.error_tail,
            )
        return exp, [], ""

    def code_dir(self, exp: Experiment | None) -> Path | None:
        """The tree a training runs: the experiment's worktree, else the incumbent's (None: the checkout)."""
        if exp is not None:
            return exp.worktree
        return self.codebase.incumbent_tree() if self.codebase is not None else None

    def sandboxed(self, code_dir: Path | None) -> bool:
        """Trainings of patched code run sandboxed (unless code.sandbox=none)."""
        return code_dir is not None and self.cfg.sandbox != "none"

    def box(self, run_dir: Path, uri: str) -> sandbox.Sandbox:
        writable = [run_dir, *sandbox.store_paths(uri)]
        return sandbox.Sandbox(
            writable=writable, memory_gb=self.cfg.memory_gb, cpu_time_s=self.cfg.cpu_time_s
        )

    def preflight_intent(
        self, label: str, overrides: list[str], trace: str, exp: Experiment, runs: Path
    ) -> LaunchIntent:
        """The experiment's smoke run: its overrides, one batch each way, the preflight timeout."""
        timeout = f"trainer.timeout_s={self.cfg.preflight_timeout_s:g}"
        return LaunchIntent(
            run_label=label,
            attempt=1,
            overrides=[*overrides, *SMOKE, timeout],
            parent_run_id=None,
            run_dir=runs / f"{label}-{trace}-preflight",
            code_dir=exp.worktree,
            experiment=exp,
        )

    def prompt_view(self) -> dict:
        """What the worker sees of the code: the editable files at the incumbent and the kept changes
        (read again only when the incumbent moved)."""
        if self.codebase is None or not self.cfg.enabled:
            return {"enabled": False}
        sha = self.codebase.incumbent()
        if self._view[0] != sha:
            self._view = (sha, self._read_view())
        return self._view[1]

    def _read_view(self) -> dict:
        files = self.codebase.files(self.cfg, FILES_CHARS)
        diff = self.codebase.incumbent_diff(self.cfg)
        return {
            "enabled": True,
            "editable": self.cfg.editable,
            "max_patch_lines": self.cfg.max_patch_lines,
            "files": files,
            "incumbent_diff": diff,
        }

    # after the training ----------------------------------------------------------------------------

    def end(self, run: ActiveRun, outcome: RunOutcome, rows: list[dict]):
        """The event and tags of an experiment's ended training, and the overrides of its confirmation run
        (None when it needs none): kept or discarded is acted upon here."""
        exp = run.experiment
        verdict = self.judge(exp, outcome, rows, run.confirms)
        final = self.settle(exp, verdict)
        event = CodeOutcome(
            cycle=run.cycle,
            cycle_trace_id=run.cycle_trace_id,
            run_label=run.run_label,
            outcome=final,
            commit=exp.commit,
            why=verdict.why,
        )
        confirm = (
            [*run.overrides, f"trainer.seed={_seed(run.overrides) + 1}"] if final == "confirming" else None
        )
        return event, tags(exp, final), confirm

    def judge(self, exp: Experiment, outcome: RunOutcome, rows: list[dict], confirmed: bool) -> Verdict:
        """Kept when its configuration beats the best other one by more than the noise band (plus
        code.keep_margin); within that, one confirmation run first (keep_rule=confirm); else discarded."""
        if outcome.status != "finished":
            return Verdict("failed", f"its training ended {outcome.status}")
        entries = ranking.rank(rows, self.metric, self.direction)
        code = f"code={exp.commit[:12]}"
        mine = [e for e in entries if code in ranking.config_key(_row(rows, e.run_id))]
        others = [e for e in entries if e not in mine]
        if not mine:
            return Verdict("failed", "its training left no finished run with the metric")
        if not others:
            return Verdict("kept", "no other configuration to beat yet")
        gain = noise.gain(mine[0].mean, others[0].mean, self.direction)
        band = noise.band(entries) + self.cfg.keep_margin
        versus = f"{mine[0].metric_text()} vs {others[0].metric_text()} (gain {gain:+.4f}, band {band:.4f})"
        if noise.beats(mine[0].mean, others[0].mean, band, self.direction):
            return Verdict("kept", f"beats {others[0].run_label} beyond the noise band: {versus}")
        if gain > 0 and self.cfg.keep_rule == "confirm" and not confirmed:
            return Verdict("confirming", f"ahead of {others[0].run_label} within the noise band: {versus}")
        return Verdict("discarded", f"does not beat {others[0].run_label} beyond the noise band: {versus}")

    def settle(self, exp: Experiment, verdict: Verdict) -> str:
        """Act on a verdict: the incumbent fast-forwards to a kept experiment, any other ends its worktree."""
        if verdict.outcome == "kept" and not self.codebase.keep(exp):
            self.codebase.discard(exp)
            return "discarded"
        if verdict.outcome in ("discarded", "failed"):
            self.codebase.discard(exp)
        return verdict.outcome


def tags(exp: Experiment, outcome: str) -> dict[str, str]:
    return {
        tracking.CODE_COMMIT: exp.commit,
        tracking.CODE_BRANCH: exp.branch,
        tracking.CODE_OUTCOME: outcome,
    }


def _seed(overrides: list[str]) -> int:
    """The training seed the overrides set (the trainer's default, 42, when none does)."""
    seeds = [o.split("=", 1)[1] for o in overrides if o.startswith("trainer.seed=")]
    return int(seeds[-1]) if seeds and seeds[-1].isdigit() else 42


def _row(rows: list[dict], run_id: str) -> dict:
    return next(r for r in rows if r["run_id"] == run_id)


def open_codebase(cfg: CodeConfig, mission: str, workspace_root: Path) -> Codebase | None:
    """The git checkout that contains the loop's working directory, when code experiments are on and
    there is one; experiments' worktrees go under the workspace."""
    if not cfg.enabled:
        return None
    try:
        return Codebase(Path.cwd(), mission, workspace_root / "worktrees")
    except CodeError:
        return None
