"""Quality gate: pure checks that a worker decision is specific, and that its overrides are safe to launch."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import unidiff
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from agentexp.codebase import CodeConfig
from agentexp.decisions import Action, WorkerDecision
from agentexp.tracking.names import TEST_FOLDER
from trainers.config import CONF_DIR, UserError, from_hydra

SHELL_CHARS = frozenset(";&|`$<>\\*?!~'\"\n\r\x00")
"""Characters with a meaning to a shell: no legitimate override value needs them."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class RangeRule(_Strict):
    min: float | None = Field(None, allow_inf_nan=False)
    """Smallest allowed value (inclusive); None = unbounded."""
    max: float | None = Field(None, allow_inf_nan=False)
    """Largest allowed value (inclusive); None = unbounded."""


class GateConfig(_Strict):
    min_rationale_chars: int = Field(ge=0)
    """A rationale shorter than this (stripped) is too thin to act on."""
    generic_labels: list[str]
    """Run-label words that say nothing; a label made only of them (plus digits) is rejected."""
    max_overrides: int = Field(ge=0)
    """Most overrides one training decision may carry."""
    data_root: Path | None = None
    """Path overrides must stay under this folder; None = the current working directory."""
    groups: list[str] = []
    """Config groups an override may switch to any preset of (`model=resnet34`: conf/model/resnet34.yaml)."""
    preset_values: list[str] = []
    """Keys `<group>.<field>` that may take any value a preset of the group gives the field (model.name)."""
    choices: dict[str, list[Any]] = {}
    """Override key -> the values it may take, for keys that no preset folder lists."""
    ranges: dict[str, RangeRule] = {}
    """Override key -> finite numeric range; lists (e.g. aug.crop_scale) are checked element-wise."""
    paths: list[str] = []
    """Override keys whose value is a path."""
    conf_dir: Path = CONF_DIR
    """The trainer's config folder, whose group folders `groups` and `preset_values` read."""
    _allowed: dict[str, list[Any]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _read_presets(self) -> GateConfig:
        listed = set(self.groups) | set(self.preset_values)
        if twice := sorted(listed & set(self.choices)):
            raise ValueError(f"gate key {twice[0]} is listed in choices and read from its presets; keep one")
        self._allowed = {**preset_choices(self.conf_dir, self.groups, self.preset_values), **self.choices}
        return self

    @property
    def allowed(self) -> dict[str, list[Any]]:
        """Every key with a list of allowed values: the groups' presets, the presets' values, `choices`."""
        return self._allowed


def preset_choices(conf_dir: Path, groups: list[str], preset_values: list[str]) -> dict[str, list[Any]]:
    """What the preset folders allow: each group's option names and each `<group>.<field>`'s preset values."""
    allowed: dict[str, list[Any]] = {group: [p.stem for p in _presets(conf_dir, group)] for group in groups}
    for key in preset_values:
        group, _, field = key.partition(".")
        values = [OmegaConf.load(path).get(field) for path in _presets(conf_dir, group)]
        allowed[key] = list(dict.fromkeys(v for v in values if v is not None))
        if not allowed[key]:
            raise ValueError(f"gate preset_values {key}: no preset in {Path(conf_dir) / group} sets {field}")
    return allowed


def _presets(conf_dir: Path, group: str) -> list[Path]:
    paths = sorted((Path(conf_dir) / group).glob("*.yaml"))
    if not paths:
        raise ValueError(f"gate group {group!r} has no presets in {Path(conf_dir) / group}")
    return paths


class Verdict(_Strict):
    passed: bool
    violations: list[str]
    """One sentence per problem, naming the override or field."""


def check(decision: WorkerDecision, cfg: GateConfig) -> Verdict:
    """Every reason to refuse the decision, one sentence each; overrides are only checked for train."""
    violations = []
    if len(decision.rationale.strip()) < cfg.min_rationale_chars:
        violations.append(f"The rationale is under {cfg.min_rationale_chars} characters: explain the step.")
    if decision.action == Action.TRAIN:
        if decision.run_label and _is_generic(decision.run_label, cfg.generic_labels):
            violations.append(f"Run label '{decision.run_label}' is generic: name what the run changes.")
        violations += _check_overrides(decision.overrides, cfg)
    return Verdict(passed=not violations, violations=violations)


def downgrade(decision: WorkerDecision, verdict: Verdict) -> WorkerDecision:
    """The decision turned into a wait whose rationale gives the gate's reasons; housekeeping is kept."""
    if verdict.passed:
        return decision
    rationale = f"Quality gate refused the {decision.action.value} decision: {' '.join(verdict.violations)}"
    return WorkerDecision(
        action=Action.WAIT,
        rationale=rationale[:2000],
        monitor_seconds=decision.monitor_seconds,
        housekeeping=decision.housekeeping,
    )


def launchable(overrides: list[str], free_slots: int) -> list[str]:
    """Why a training with these (complete) overrides cannot start now: no free slot, or they do not
    compose with the trainer config ([] when it can)."""
    if free_slots <= 0:
        return ["Every training slot is busy (executor.max_concurrent): wait for a run to end."]
    return check_composes(overrides)


def check_composes(overrides: list[str], conf_dir: Path = CONF_DIR) -> list[str]:
    """Compose the trainer config with the overrides and validate it; the problems found ([] if none)."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(Path(conf_dir).resolve())):
            from_hydra(compose("train", overrides=list(overrides)))
    except (HydraException, OmegaConfBaseException, UserError) as err:
        # Hydra's hints (search path, "use +key") add noise and suggest what the gate forbids.
        message = re.split(r" (?:Config search path|To append to your config)", " ".join(str(err).split()))[0]
        return [f"The overrides do not compose with the trainer config: {message[:400]}"]
    return []


def fit_space(space: dict[str, dict[str, Any]], cfg: GateConfig, where: str) -> dict[str, dict[str, Any]]:
    """A planner search space with the gate's choices where a key names no values of its own.

    Raises ValueError, one sentence starting with `where`, for a key or value the gate would refuse.
    """
    fitted = {}
    for key, spec in space.items():
        problem = _space_refusal(key, spec, cfg)
        if problem:
            raise ValueError(f"{where} {key} {problem}")
        takes_gate_choices = key in cfg.allowed and not any(k in spec for k in ("choices", "low", "high"))
        fitted[key] = {**spec, "choices": cfg.allowed[key]} if takes_gate_choices else spec
    return fitted


def _space_refusal(key: str, spec: dict[str, Any], cfg: GateConfig) -> str | None:
    allowed, rule = cfg.allowed.get(key), cfg.ranges.get(key)
    if allowed is None and rule is None:
        return "is not a key the gate allows"
    if not isinstance(spec, dict) or not isinstance(spec.get("choices") or [], list):
        return "must be a mapping with a list of choices, or low and high"
    values = [("choice", c) for c in spec.get("choices") or []]
    values += [(end, spec[end]) for end in ("low", "high") if spec.get(end) is not None]
    for name, value in values:
        if allowed is not None and not any(_same(value, c) for c in allowed):
            return f"{name} {_listing([value])} is not among the gate's choices ({_listing(allowed)})"
        if rule is not None and (not _is_number(value) or not _within(value, rule)):
            return f"{name} {value} is outside the gate's range {rule.min}..{rule.max}"
    return None


def _is_generic(label: str, generic: list[str]) -> bool:
    words = [w for w in re.split(r"[\d._-]+", label.lower()) if w]
    return all(w in {g.lower() for g in generic} for w in words)


def _check_overrides(overrides: list[str], cfg: GateConfig) -> list[str]:
    violations = []
    if len(overrides) > cfg.max_overrides:
        violations.append(f"{len(overrides)} overrides given; at most {cfg.max_overrides} are allowed.")
    keys: set[str] = set()
    for text in overrides:
        problem, key = _check_override(text, cfg)
        if problem is None and key in keys:
            problem = f"Override '{text}' sets {key} a second time."
        keys.add(key)
        if problem:
            violations.append(problem)
    return violations


def _check_override(text: str, cfg: GateConfig) -> tuple[str | None, str]:
    """The first problem with one override (or None), and the key it sets."""
    if "_target_" in text:
        return f"Override '{text}' touches _target_, which would instantiate arbitrary code.", ""
    if "${" in text:
        return f"Override '{text}' uses ${{...}} interpolation, which is not allowed.", ""
    try:
        override = OverridesParser.create().parse_overrides([text])[0]
    except HydraException:
        return f"Override '{text}' is not valid Hydra override syntax.", ""
    key = override.key_or_group
    if re.split(r"[./]", key)[0] == "hydra":
        return f"Override '{text}' touches hydra.*, which only the user may change.", key
    if override.type != OverrideType.CHANGE:
        return f"Override '{text}' uses a +, ++ or ~ prefix, which adds or deletes config keys.", key
    if override.package is not None:
        return f"Override '{text}' uses @package syntax, which is not allowed.", key
    if override.is_sweep_override():
        return f"Override '{text}' is a sweep (a=1,2, choice(), range(), glob()); give one value.", key
    if key not in cfg.allowed and key not in cfg.ranges and key not in cfg.paths:
        return f"Override '{text}' sets {key}, which is not an allowed key.", key
    return _check_value(text, key, override.value(), cfg), key


def _check_value(text: str, key: str, value: Any, cfg: GateConfig) -> str | None:
    items = value if isinstance(value, list) else [value]
    if any(isinstance(v, str) and SHELL_CHARS & set(v) for v in items):
        return f"Override '{text}' has shell metacharacters in its value."
    if key in cfg.allowed and not any(_same(value, c) for c in cfg.allowed[key]):
        return f"Override '{text}' is not an allowed choice for {key} ({_listing(cfg.allowed[key])})."
    if key in cfg.ranges:
        return _check_range(text, key, items, cfg.ranges[key])
    if key in cfg.paths:
        if not isinstance(value, str):
            return f"Override '{text}' must give a path for {key}."
        if not _inside(value, cfg.data_root):
            return f"Override '{text}' points outside the data root."
        if any(TEST_FOLDER in (part, Path(part).stem) for part in Path(value).parts):
            return f"Override '{text}' names held-out test data, which no training may read."
    return None


def _check_range(text: str, key: str, items: list[Any], rule: RangeRule) -> str | None:
    for v in items:
        if not _is_number(v):
            return f"Override '{text}' must give a number for {key}."
        if not math.isfinite(v):
            return f"Override '{text}' is not a finite number (NaN or inf)."
        if not _within(v, rule):
            return f"Override '{text}' is outside the allowed range {rule.min}..{rule.max} for {key}."
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _within(value: float, rule: RangeRule) -> bool:
    return (rule.min is None or value >= rule.min) and (rule.max is None or value <= rule.max)


def _listing(values: list[Any]) -> str:
    return ", ".join("null" if v is None else str(v) for v in values)


def _same(value: Any, choice: Any) -> bool:
    """Equal and of the same type, so that 1 does not match true."""
    return type(value) is type(choice) and value == choice


def _inside(value: str, data_root: Path | None) -> bool:
    # Lexical (abspath, not resolve): `..` escapes are refused, while a symlink the user placed
    # (the workspace's `data` link) is trusted. Relative paths resolve as the trainer sees them: from the cwd.
    root = Path(os.path.abspath(data_root or "."))
    return Path(os.path.abspath(value)).is_relative_to(root)


_FORBIDDEN = re.compile(
    r"\b(mlflow|agentexp|subprocess|socket)\b|os\.environ|\bgetenv\b|\btrainers\.(?!(recipe|config)\b)\w+"
)
"""Names an added recipe line may not use (defence in depth: the sandbox is the guarantee); the recipe may
import its own modules and the config it is given (trainers.config), nothing else of the harness."""
_SYMLINK = re.compile(r"^(new file mode|new mode) 120000$", re.MULTILINE)


def check_patch(patch: str, cfg: CodeConfig) -> list[str]:
    """Why a patch may not run ([] when the text itself is fine): parse, paths, size, binary, symlinks,
    names its added lines use. Whether it applies and compiles is checked on the incumbent (codebase.py)."""
    try:
        files = unidiff.PatchSet(patch)
    except unidiff.UnidiffParseError as err:
        return [f"The patch is not a unified diff: {str(err)[:200]}."]
    if not files:
        return ["The patch changes no file."]
    violations, lines = [], 0
    for f in files:
        paths = {_strip(f.source_file), _strip(f.target_file)} - {None}
        bad = [p for p in paths if p.startswith("/") or ".." in p.split("/")]
        outside = [p for p in paths if p not in bad and not cfg.allows(p)]
        if bad:
            violations.append(f"The patch names {bad[0]}: paths must be relative, without '..'.")
        elif outside:
            violations.append(
                f"The patch touches {outside[0]}, outside code.editable ({', '.join(cfg.editable)})."
            )
        if f.is_binary_file:
            violations.append(f"The patch has a binary change to {f.path}.")
        if _SYMLINK.search(str(f.patch_info)):
            violations.append(f"The patch makes {f.path} a symlink.")
        added = [line.value for hunk in f for line in hunk if line.is_added]
        lines += len(added) + sum(line.is_removed for hunk in f for line in hunk)
        if used := {m.group(0) for line in added for m in _FORBIDDEN.finditer(line)}:
            violations.append(
                f"The patch's new lines in {f.path} use {', '.join(sorted(used))}, which a recipe may not."
            )
    if lines > cfg.max_patch_lines:
        violations.append(
            f"The patch changes {lines} lines; at most {cfg.max_patch_lines} (code.max_patch_lines)."
        )
    return violations


def _strip(name: str | None) -> str | None:
    """A diff header's file name without its a/ or b/ prefix (None for /dev/null)."""
    if not name or name == "/dev/null":
        return None
    return name[2:] if name[:2] in ("a/", "b/") else name
