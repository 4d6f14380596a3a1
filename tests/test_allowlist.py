"""One allowlist: the gate reads its options from the preset folders, and the planner searches inside it."""

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from pydantic import ValidationError

from agentexp.config import ConfigError, compose_loop
from agentexp.decisions import Action, WorkerDecision
from agentexp.gate import GateConfig, check, fit_space
from agentexp.llm import LLMRequest, build_backend

CONF = Path(__file__).resolve().parents[1] / "conf"
GATE = OmegaConf.to_container(OmegaConf.load(CONF / "gate" / "default.yaml"))


def train(*overrides: str) -> WorkerDecision:
    return WorkerDecision(
        action="train",
        rationale="the best run used resnet18; a smaller network may generalise better here",
        run_label="tiny_net",
        overrides=overrides,
        strategy_dimension="model_arch",
    )


def test_the_gate_allows_each_preset_of_its_groups_and_the_timm_names_they_set():
    gate = GateConfig.model_validate(GATE)
    presets = sorted((CONF / "model").glob("*.yaml"))
    assert gate.allowed["model"] == [p.stem for p in presets]
    assert gate.allowed["model.name"] == [OmegaConf.load(p).name for p in presets]
    assert gate.allowed["aug"] == ["light", "none", "strong"]
    assert gate.allowed["optim.schedule"] == GATE["choices"]["optim.schedule"]  # listed keys stay


def test_a_model_that_only_has_a_preset_passes_the_gate(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "model" / "tiny_net.yaml").write_text("name: tiny_timm_net\npretrained: false\n")
    decision = train("model=tiny_net", "model.name=tiny_timm_net")
    assert check(decision, GateConfig.model_validate({**GATE, "conf_dir": conf})).passed
    refused = check(decision, GateConfig.model_validate(GATE)).violations
    assert len(refused) == 2 and "not an allowed choice for model (" in refused[0]


def test_a_group_without_presets_is_a_config_error():
    with pytest.raises(ConfigError, match="gate group 'nosuch' has no presets"):
        compose_loop(["gate.groups=[model,nosuch]"])
    with pytest.raises(ValidationError, match="listed in choices and read from its presets"):
        GateConfig.model_validate({**GATE, "choices": {"model": ["resnet18"]}})


@pytest.mark.parametrize(
    "override, sentence",
    [
        (
            "llm.space={optim.lr:{low:1.0e-4,high:3.0,log:true,default:1.0e-3}}",
            "llm.space optim.lr high 3.0 is outside the gate's range 1e-05..1.0",
        ),
        (
            "llm.space.model.choices=[resnet18,resnet50]",
            "llm.space model choice resnet50 is not among the gate's choices (convnext_atto, "
            "efficientnet_b0, mobilenetv3_small_100, regnetx_002, resnet10t, resnet18, resnet34)",
        ),
    ],
)
def test_a_planner_space_value_the_gate_would_refuse_is_one_config_error(override, sentence):
    with pytest.raises(ConfigError) as err:
        compose_loop(["llm=planner", override])
    assert str(err.value) == sentence


def test_the_mentor_planner_space_is_checked_too():
    with pytest.raises(ConfigError, match=r"^mentor\.llm\.space aug choice wild is not among the gate's"):
        compose_loop(["mentor/llm=planner", "+mentor.llm.space.aug.choices=[wild]"])


def test_space_keys_and_malformed_entries_the_gate_does_not_know_are_refused():
    gate = GateConfig.model_validate(GATE)
    with pytest.raises(ValueError, match=r"^llm\.space trainer\.accelerator is not a key the gate allows$"):
        fit_space({"trainer.accelerator": {"choices": ["gpu"], "default": "gpu"}}, gate, "llm.space")
    with pytest.raises(ValueError, match="must be a mapping"):
        fit_space({"aug": "strong"}, gate, "llm.space")
    with pytest.raises(ValueError, match="low fast is outside the gate's range"):
        fit_space({"optim.lr": {"low": "fast", "high": 0.1, "default": 0.01}}, gate, "llm.space")


def test_the_default_loop_takes_the_planner_choices_it_does_not_restrict_from_the_gate():
    cfg = compose_loop([])
    assert cfg.llm.name == "planner" and cfg.mentor.llm is None
    assert cfg.llm.space["aug"]["choices"] == ["light", "none", "strong"]
    assert cfg.llm.space["optim.schedule"]["choices"] == ["cosine", "onecycle", "constant"]
    assert "resnet34" not in cfg.llm.space["model"]["choices"]  # a restriction the planner names stays


def test_agentexp_loop_llm_planner_composes_and_proposes_what_the_gate_passes(tmp_path):
    cfg = compose_loop(["llm=planner", "mentor/llm=planner"])
    assert cfg.mentor.llm.space == cfg.llm.space
    backend = build_backend(cfg.llm, tmp_path)
    request = LLMRequest(role="worker", prompt="decide", json_schema={}, context={"runs": []})
    decision = WorkerDecision.model_validate_json(backend.decide(request).raw)
    assert decision.action == Action.TRAIN
    assert check(decision, cfg.gate).passed, check(decision, cfg.gate).violations
