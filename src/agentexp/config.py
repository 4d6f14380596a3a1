"""The loop's typed config: conf/loop.yaml composed with Hydra and validated once, here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentexp.agents.mentor import MentorConfig
from agentexp.codebase import CodeConfig
from agentexp.gate import GateConfig, fit_space
from agentexp.launchers.local import LocalConfig
from agentexp.launchers.slurm import SlurmConfig
from agentexp.llm.base import LLMConfig, PlannerConfig
from agentexp.repair import RepairConfig
from agentexp.trainings import ExecutorConfig
from trainers.config import CONF_DIR

MISSIONS_DIR = CONF_DIR.parent / "missions"


class ConfigError(Exception):
    """The loop config does not compose or validate; one sentence."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class LoopSettings(_Strict):
    max_cycles: int = Field(ge=1)
    """Cycles of this invocation."""
    poll_seconds: float = Field(ge=0)
    """Pause between cycles."""
    workspace: Path
    """The `.llm_loop` folder, relative to the working directory."""
    run_hours: float | None = Field(None, gt=0)
    max_trainings: int | None = Field(None, ge=1)
    """Once this many trainings were launched and all have ended, the loop exits (reason max_trainings); a
    pruned training counts as the share of its epochs it ran, and a new one starts only while a whole one
    still fits."""
    max_llm_calls: int | None = Field(None, ge=1)
    max_cost_usd: float | None = Field(None, gt=0)
    max_reasks: int = Field(2, ge=0, le=5)
    stuck_wait_recovery: bool = False
    """Stop a training nobody watches after stale_orphan_cycles idle cycles."""
    stale_orphan_cycles: int = Field(5, ge=1)
    train_overrides: list[str] = []
    """Fixed overrides of every loop training, applied before the mission's and the LLM's."""


class MentorSection(MentorConfig):
    llm: LLMConfig | None = None
    """The mentor's backend; None = the worker's."""


class TrackingSection(_Strict):
    uri: str
    experiment: str | None = None
    """None = the mission's name."""


class LoopConfig(_Strict):
    llm: LLMConfig
    mentor: MentorSection
    gate: GateConfig
    mission: str
    loop: LoopSettings
    executor: ExecutorConfig
    tracking: TrackingSection
    repair: RepairConfig = RepairConfig()
    code: CodeConfig = CodeConfig()
    launcher: Annotated[LocalConfig | SlurmConfig, Field(discriminator="name")] = LocalConfig()


def check_options(overrides: list[str], conf_dir: Path) -> None:
    """A ConfigError naming the choices for a `group=option` override whose option has no file.

    Hydra says only that it could not find the file, and ignores an unknown option of an optional
    group (mentor/llm) altogether.
    """
    for override in overrides:
        key, sep, option = override.lstrip("+").partition("=")
        group = conf_dir / key
        if not (key and sep) or "@" in key or not group.is_dir():
            continue
        choices = sorted(path.stem for path in group.glob("*.yaml"))
        if option not in choices:
            raise ConfigError(f"Unknown {key} option {option!r}: choose one of {', '.join(choices)}")


def compose_loop(overrides: list[str], conf_dir: Path = CONF_DIR) -> LoopConfig:
    """Compose conf/loop.yaml with the overrides; every problem is a ConfigError in one sentence."""
    return _fit_planner_spaces(_compose(overrides, conf_dir))


def _fit_planner_spaces(cfg: LoopConfig) -> LoopConfig:
    """Planner backends search only what the gate lets through: their spaces filled from and checked by it."""
    try:
        llm = _fit(cfg.llm, cfg.gate, "llm.space")
        mentor_llm = cfg.mentor.llm and _fit(cfg.mentor.llm, cfg.gate, "mentor.llm.space")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return cfg.model_copy(update={"llm": llm, "mentor": cfg.mentor.model_copy(update={"llm": mentor_llm})})


def with_mission_space(cfg: LoopConfig, space: dict[str, dict[str, Any] | None]) -> LoopConfig:
    """The loop config with a mission's planner space merged over llm.space (null removes a key), checked
    against the gate like the shipped one; a ConfigError in one sentence."""
    if not space:
        return cfg

    def merged(llm: LLMConfig | None) -> LLMConfig | None:
        if not isinstance(llm, PlannerConfig):
            return llm
        spec = {k: v for k, v in {**llm.space, **space}.items() if v is not None}
        return llm.model_copy(update={"space": spec})

    update = {"llm": merged(cfg.llm), "mentor": cfg.mentor.model_copy(update={"llm": merged(cfg.mentor.llm)})}
    return _fit_planner_spaces(cfg.model_copy(update=update))


def _fit(llm: LLMConfig, gate: GateConfig, where: str) -> LLMConfig:
    if not isinstance(llm, PlannerConfig):
        return llm
    return llm.model_copy(update={"space": fit_space(llm.space, gate, where)})


def _compose(overrides: list[str], conf_dir: Path) -> LoopConfig:
    check_options(overrides, conf_dir)
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(conf_dir), job_name="agentexp"):
            cfg = compose("loop", overrides=overrides)
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    try:
        return LoopConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"Invalid loop config at {where}: {first['msg']}") from None
