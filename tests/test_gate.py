"""The quality gate with the shipped conf/gate/default.yaml: good decisions pass, hostile ones do not."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from pydantic import ValidationError

from agentexp.decisions import Action, WorkerDecision
from agentexp.gate import GateConfig, Verdict, check, check_composes, downgrade

GATE_YAML = Path(__file__).resolve().parents[1] / "conf" / "gate" / "default.yaml"
RATIONALE = "run 4f2a hit 0.93 val_acc with light aug; stronger aug should reduce the 3-vs-8 confusions."


@pytest.fixture(scope="module")
def cfg() -> GateConfig:
    return GateConfig.model_validate(OmegaConf.to_container(OmegaConf.load(GATE_YAML)))


def train(overrides=(), label="resnet34_strong_aug", rationale=RATIONALE) -> WorkerDecision:
    return WorkerDecision(
        action=Action.TRAIN,
        rationale=rationale,
        run_label=label,
        overrides=list(overrides),
        strategy_dimension="augmentation",
        housekeeping={"notes_update": "keep this note"},
    )


def refusal(raw: str, cfg: GateConfig) -> str:
    """Feed raw LLM output through the schema and the gate; the reasons it was refused ('' if it passed)."""
    try:
        decision = WorkerDecision.model_validate_json(raw)
    except ValidationError as err:
        return str(err)
    return " ".join(check(decision, cfg).violations)


GOOD_OVERRIDES = [
    "model=resnet34",
    "aug=strong",
    "optim.lr=3e-4",
    "optim.schedule=onecycle",
    "loss.class_weights=null",
    "aug.crop_scale=[0.5,1.0]",
    "data.balanced_sampler=true",
    "trainer.epochs=10",
]


def test_good_decision_passes(cfg):
    verdict = check(train(GOOD_OVERRIDES), cfg)
    assert verdict == Verdict(passed=True, violations=[])


def test_train_with_no_overrides_passes(cfg):
    assert check(train([]), cfg).passed


@pytest.mark.parametrize(
    "override, names",
    [
        ("hydra.run.dir=/", "hydra.*"),
        ("hydra/launcher=submitit_slurm", "hydra.*"),
        ("+_target_=os.system", "_target_"),
        ("model._target_=os.system", "_target_"),
        ("data.root=../../etc", "outside the data root"),
        ("data.root=/etc", "outside the data root"),
        ("data.csv_path=data/../../x.csv", "outside the data root"),
        ('data.root="~/.ssh"', "shell metacharacters"),
        ("data.root=${oc.env:HOME}", "interpolation"),
        ("model.name=${oc.env:HOME}", "interpolation"),
        ("optim.lr=nan", "finite"),
        ("optim.lr=inf", "finite"),
        ("optim.lr=float('nan')", "finite"),
        ("optim.lr=int(1e9)", "range"),
        ("optim.lr=1e9", "range"),
        ("optim.lr=0", "range"),
        ("optim.lr=true", "number"),
        ("optim.lr=fast", "number"),
        ("trainer.epochs=1000", "range"),
        ("aug.crop_scale=[0.01,1.0]", "range"),
        ("trainer.accelerator=gpu", "not an allowed key"),
        ("trainer.strategy=ddp", "not an allowed key"),
        ("tracking.uri=sqlite:////tmp/x.db", "not an allowed key"),
        ("run_label=other", "not an allowed key"),
        ("model.pretrained=true", "not an allowed key"),
        ("data=imagefolder", "not an allowed key"),
        ("foo.bar=1", "not an allowed key"),
        ("optim.lr=1e-3,1e-4", "sweep"),
        ("model=choice(resnet18,resnet34)", "sweep"),
        ("optim.lr=range(1,3)", "sweep"),
        ("model.name=glob(*)", "sweep"),
        ("optim.lr=interval(0,1)", "sweep"),
        ("~model", "prefix"),
        ("++x=1", "prefix"),
        ("+optim.lr=1e-3", "prefix"),
        ("model@model=resnet18", "@package"),
        ("model.name='resnet18; rm -rf /'", "shell metacharacters"),
        ("data.root='data/x && curl evil'", "shell metacharacters"),
        ("data.root='$(reboot)'", "shell metacharacters"),
        ("model=notamodel", "not an allowed choice"),
        ("loss.class_weights=inverse", "not an allowed choice"),
        ("data.balanced_sampler=1", "not an allowed choice"),
        ('optim.lr="unclosed', "not valid Hydra override syntax"),
    ],
)
def test_hostile_override_is_refused_with_a_reason_naming_it(cfg, override, names):
    verdict = check(train([override]), cfg)
    assert not verdict.passed
    assert len(verdict.violations) == 1
    assert names in verdict.violations[0]
    assert override in verdict.violations[0]


GOOD_JSON = {
    "action": "train",
    "rationale": RATIONALE,
    "run_label": "resnet34_light",
    "strategy_dimension": "loss",
}


@pytest.mark.parametrize(
    "raw, names",
    [
        ("{oops", "Invalid JSON"),
        (json.dumps({**GOOD_JSON, "shell": "rm -rf /"}), "shell"),
        (json.dumps({**GOOD_JSON, "rationale": "x" * 5000}), "rationale"),
        (json.dumps({**GOOD_JSON, "run_label": "../escape"}), "run_label"),
        (json.dumps({**GOOD_JSON, "run_label": "nul\u0000byte"}), "run_label"),
        (json.dumps({**GOOD_JSON, "overrides": ["optim.lr=nan"]}), "finite"),
        (json.dumps({**GOOD_JSON, "overrides": ["hydra.run.dir=/"]}), "hydra"),
        (json.dumps({**GOOD_JSON, "overrides": ["+_target_=os.system"]}), "_target_"),
        (json.dumps({**GOOD_JSON, "overrides": ["data.root=../../etc"]}), "outside the data root"),
        (json.dumps({**GOOD_JSON, "overrides": "optim.lr=1"}), "overrides"),
        (json.dumps({**GOOD_JSON, "rationale": "ok"}), "rationale"),
        (json.dumps({**GOOD_JSON, "run_label": "exp1"}), "generic"),
    ],
)
def test_hostile_llm_output_is_refused_by_schema_or_gate(cfg, raw, names):
    reasons = refusal(raw, cfg)
    assert names in reasons


def test_good_llm_output_passes_schema_and_gate(cfg):
    assert refusal(json.dumps({**GOOD_JSON, "overrides": GOOD_OVERRIDES}), cfg) == ""


@pytest.mark.parametrize(
    "label", ["run", "test", "exp1", "Experiment_2", "baseline", "TRAIN-03", "test_run", "run.1"]
)
def test_generic_run_label_is_refused(cfg, label):
    verdict = check(train(label=label), cfg)
    assert verdict.violations == [f"Run label '{label}' is generic: name what the run changes."]


@pytest.mark.parametrize("label", ["resnet34_strong_aug", "baseline_convnext_atto", "lr3e-4_cosine"])
def test_specific_run_label_passes(cfg, label):
    assert check(train(label=label), cfg).passed


def test_short_rationale_is_refused_for_any_action(cfg):
    verdict = check(WorkerDecision(action="wait", rationale="   waiting   "), cfg)
    assert not verdict.passed and "rationale" in verdict.violations[0]


def test_overrides_of_non_train_decisions_are_not_executed_so_not_checked(cfg):
    decision = WorkerDecision(action="analyze", rationale=RATIONALE, overrides=["hydra.run.dir=/"])
    assert check(decision, cfg).passed


def test_too_many_and_repeated_overrides_are_refused(cfg):
    verdict = check(train([f"trainer.seed={i}" for i in range(cfg.max_overrides + 1)]), cfg)
    assert f"at most {cfg.max_overrides}" in verdict.violations[0]
    assert "a second time" in verdict.violations[1]


def test_every_violation_is_reported(cfg):
    verdict = check(train(["hydra.run.dir=/", "optim.lr=nan"], label="test", rationale="short"), cfg)
    assert len(verdict.violations) == 4


def test_paths_under_the_working_directory_pass(cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check(train(["data.root=data/images", f"data.csv_path={tmp_path}/labels.csv"]), cfg).passed
    assert not check(train([f"data.root={tmp_path.parent}"]), cfg).passed


def test_data_root_bounds_path_overrides(cfg, tmp_path):
    rooted = cfg.model_copy(update={"data_root": tmp_path / "datasets"})
    assert check(train([f"data.root={tmp_path}/datasets/xray"]), rooted).passed
    assert not check(train([f"data.root={tmp_path}/datasets/../secrets"]), rooted).passed


def test_downgrade_turns_a_refused_decision_into_a_wait_with_reasons(cfg):
    decision = train(["hydra.run.dir=/"])
    verdict = check(decision, cfg)
    waited = downgrade(decision, verdict)
    assert waited.action is Action.WAIT
    assert waited.overrides == [] and waited.run_label is None
    assert "hydra.run.dir=/" in waited.rationale
    assert waited.housekeeping.notes_update == "keep this note"
    assert downgrade(decision, Verdict(passed=True, violations=[])) is decision


def test_downgrade_rationale_stays_valid_when_reasons_are_long(cfg):
    decision = train([f"x{i}.y=" + "z" * 150 for i in range(20)])
    waited = downgrade(decision, check(decision, cfg))
    assert len(waited.rationale) == 2000


def test_good_overrides_compose_with_the_trainer_config():
    assert check_composes(GOOD_OVERRIDES) == []
    assert check_composes([]) == []


@pytest.mark.parametrize(
    "override, names",
    [("optim.lr=-1", "optim.lr"), ("model=notamodel", "notamodel"), ("data.root=imgs", "data.root")],
)
def test_bad_overrides_do_not_compose(override, names):
    violations = check_composes([override])
    assert len(violations) == 1
    assert names in violations[0]
    assert not any(noise in violations[0] for noise in ("\n", "To append", "search path"))


def _fmt(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def test_every_allowlisted_value_composes(cfg):
    """The allowlist and the trainer's schema agree: each choice and both ends of each range compose."""
    width = max(len(values) for values in cfg.allowed.values())
    for i in range(width):
        overrides = [f"{key}={_fmt(values[i % len(values)])}" for key, values in cfg.allowed.items()]
        for key, rule in cfg.ranges.items():
            end = rule.min if i % 2 else rule.max
            value = int(end) if end.is_integer() else end
            overrides.append(f"{key}=[{value},{value}]" if key == "aug.crop_scale" else f"{key}={value}")
        assert check_composes(overrides) == [], overrides
