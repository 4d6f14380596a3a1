"""Missions: the role contracts and a mission brief from missions/, with their rule budgets checked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainers.config import METRIC_KEYS

MISSIONS_DIR = Path(__file__).resolve().parents[2] / "missions"
"""The repository's missions/ folder (the loop's default)."""
WORKER_FILE, WORKER_BUDGET = "WORKER_MISSION.md", 12
MENTOR_FILE, MENTOR_BUDGET = "MENTOR_MISSION.md", 8

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FRONT_RE = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*\n?(.*)\Z", re.DOTALL)
_RULE_RE = re.compile(r"^(?:[-*+]|\d+[.)])\s+(\S.*)$")  # top-level list items only: no indentation
_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


class MissionError(Exception):
    """A mission problem the user can fix, stated in one sentence."""


class FrontMatter(BaseModel):
    """The YAML header of missions/<name>/mission.md."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    metric: Literal["accuracy", "macro_f1", "auroc"]
    """The one metric the agents optimize and may not change."""
    direction: Literal["maximize", "minimize"]
    """Which way is better."""
    overrides: list[str] = Field(default_factory=list)
    """Trainer overrides prepended to every training (data preset and the like)."""
    space: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    """The planner's search space for this mission, merged over llm.space: a key's spec replaces the
    shipped one, null removes the key (e.g. `data.image_size: {choices: [32, 64], default: 64}`)."""


class Mission(BaseModel):
    """Everything the agents are told about the task and their roles."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str
    """Folder name under missions/."""
    brief: str
    """The mission's Markdown body: task, data, budget, what may change."""
    metric: str
    """Primary metric name, e.g. accuracy."""
    metric_key: str
    """Per-epoch metric the trainer logs for it, e.g. val_acc."""
    direction: Literal["maximize", "minimize"]
    """Which way is better."""
    overrides: list[str]
    """Prepended to every training: the front matter's overrides, then `metric=<metric>`."""
    space: dict[str, dict[str, Any] | None] = {}
    """The mission's planner search space changes (see FrontMatter.space)."""
    worker_rules: list[str]
    """The AI-Builder's rules, in order."""
    mentor_rules: list[str]
    """The AI-Mentor's rules, in order."""
    worker_contract: str
    """WORKER_MISSION.md, verbatim."""
    mentor_contract: str
    """MENTOR_MISSION.md, verbatim."""

    @property
    def summary_key(self) -> str:
        """The summary metric the leaderboard orders by, e.g. best_val_acc."""
        return f"best_{self.metric_key}"


def available(missions_dir: Path) -> list[str]:
    """Names of the folders under `missions_dir` holding a mission.md."""
    if not missions_dir.is_dir():
        return []
    return sorted(p.parent.name for p in missions_dir.glob("*/mission.md"))


def count_rules(markdown: str) -> list[str]:
    """The top-level list items under the "## Rules" heading (up to the next heading of level 1-2)."""
    rules: list[str] = []
    inside = False
    for line in markdown.splitlines():
        heading = _HEADING_RE.match(line)
        if heading and len(heading.group(1)) <= 2:
            inside = heading.group(2).strip().lower() == "rules"
            continue
        item = _RULE_RE.match(line) if inside else None
        if item:
            rules.append(item.group(1).strip())
    return rules


def load_contract(path: Path, budget: int) -> tuple[str, list[str]]:
    """A role contract's text and rules; missing, rule-less or over-budget files are a MissionError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MissionError(f"cannot read the role contract {path}: {exc.strerror or exc}") from exc
    rules = count_rules(text)
    if not rules:
        raise MissionError(f"{path.name} has no rules under a '## Rules' heading")
    if len(rules) > budget:
        raise MissionError(f"{path.name} has {len(rules)} rules; the budget is {budget}")
    return text, rules


def parse_brief(path: Path) -> tuple[FrontMatter, str]:
    """The front matter and Markdown body of a mission.md."""
    match = _FRONT_RE.match(path.read_text(encoding="utf-8"))
    if not match:
        raise MissionError(f"{path} must start with YAML front matter between '---' lines")
    try:
        front = FrontMatter.model_validate(yaml.safe_load(match.group(1)) or {})
    except yaml.YAMLError as exc:
        raise MissionError(f"the front matter of {path} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'front matter'}: {e['msg']}" for e in exc.errors()
        )
        raise MissionError(f"the front matter of {path} is invalid: {problems}") from exc
    return front, match.group(2).strip()


def load_mission(name: str, missions_dir: Path = MISSIONS_DIR) -> Mission:
    """Load missions/<name>/mission.md and both role contracts; every problem is one MissionError."""
    missions_dir = Path(missions_dir)
    names = available(missions_dir)
    if not _NAME_RE.match(name) or name not in names:
        choices = ", ".join(names) or f"none in {missions_dir}"
        raise MissionError(f"unknown mission {name!r}; available missions: {choices}")
    front, brief = parse_brief(missions_dir / name / "mission.md")
    worker_contract, worker_rules = load_contract(missions_dir / WORKER_FILE, WORKER_BUDGET)
    mentor_contract, mentor_rules = load_contract(missions_dir / MENTOR_FILE, MENTOR_BUDGET)
    overrides = list(front.overrides)
    if not any(o.split("=", 1)[0] == "metric" for o in overrides):
        overrides.append(f"metric={front.metric}")  # the trainer must summarize the mission's metric
    return Mission(
        name=name,
        brief=brief,
        metric=front.metric,
        metric_key=METRIC_KEYS[front.metric],
        direction=front.direction,
        overrides=overrides,
        space=front.space,
        worker_rules=worker_rules,
        mentor_rules=mentor_rules,
        worker_contract=worker_contract.strip(),
        mentor_contract=mentor_contract.strip(),
    )
