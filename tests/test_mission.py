"""Missions: the shipped digits mission, front matter, rule budgets and unknown names."""

from pathlib import Path

import pytest

from agentexp.mission import MISSIONS_DIR, MissionError, count_rules, load_mission

FRONT = (
    "---\nmetric: {metric}\ndirection: maximize\noverrides: {overrides}\n---\n# Brief\n\nClassify things.\n"
)


def contract(name: str, rules: int) -> str:
    items = "\n".join(f"{i}. Rule number {i}." for i in range(1, rules + 1))
    return f"# {name}\n\n## What you CAN do\n\n- train\n- wait\n\n## Rules\n\n{items}\n"


def missions(tmp_path: Path, worker_rules: int = 3, mentor_rules: int = 2, **briefs: str) -> Path:
    root = tmp_path / "missions"
    root.mkdir()
    (root / "WORKER_MISSION.md").write_text(contract("AI-Builder", worker_rules))
    (root / "MENTOR_MISSION.md").write_text(contract("AI-Mentor", mentor_rules))
    for name, text in (
        briefs or {"demo": FRONT.format(metric="accuracy", overrides="[data=digits]")}
    ).items():
        (root / name).mkdir()
        (root / name / "mission.md").write_text(text)
    return root


def test_the_shipped_digits_mission_loads_within_budget():
    mission = load_mission("digits", MISSIONS_DIR)
    assert (mission.metric, mission.direction, mission.metric_key) == ("accuracy", "maximize", "val_acc")
    assert mission.summary_key == "best_val_acc"
    assert mission.overrides == ["data=digits", "metric=accuracy"]
    assert "1,797" in mission.brief and not mission.brief.startswith("---")
    assert 1 <= len(mission.worker_rules) <= 12 and 1 <= len(mission.mentor_rules) <= 8
    assert "AI-Builder" in mission.worker_contract and "AI-Mentor" in mission.mentor_contract
    assert "CANNOT" in mission.worker_contract


def test_front_matter_sets_metric_direction_and_overrides(tmp_path):
    brief = FRONT.format(metric="macro_f1", overrides="[data=csv, data.csv_path=labels.csv]")
    mission = load_mission("shop", missions(tmp_path, shop=brief))
    assert mission.metric_key == "val_macro_f1"
    assert mission.overrides == ["data=csv", "data.csv_path=labels.csv", "metric=macro_f1"]
    assert mission.brief == "# Brief\n\nClassify things."


def test_an_explicit_metric_override_is_not_repeated(tmp_path):
    brief = FRONT.format(metric="auroc", overrides="[data=digits, metric=auroc]")
    assert load_mission("x", missions(tmp_path, x=brief)).overrides == ["data=digits", "metric=auroc"]


def test_thirteen_worker_rules_exceed_the_budget(tmp_path):
    with pytest.raises(MissionError, match=r"WORKER_MISSION.md has 13 rules; the budget is 12"):
        load_mission("demo", missions(tmp_path, worker_rules=13))


def test_nine_mentor_rules_exceed_the_budget(tmp_path):
    with pytest.raises(MissionError, match=r"MENTOR_MISSION.md has 9 rules; the budget is 8"):
        load_mission("demo", missions(tmp_path, mentor_rules=9))


def test_budgets_at_the_limit_load(tmp_path):
    mission = load_mission("demo", missions(tmp_path, worker_rules=12, mentor_rules=8))
    assert len(mission.worker_rules) == 12 and mission.mentor_rules[-1] == "Rule number 8."


def test_only_top_level_items_under_rules_count():
    text = (
        "## CAN\n- a\n- b\n## Rules\n1. one\n   - detail\n* two\n### Why\n- three\n## Later\n- not a rule\n"
    )
    assert count_rules(text) == ["one", "two", "three"]


def test_a_contract_without_rules_is_an_error(tmp_path):
    root = missions(tmp_path)
    (root / "MENTOR_MISSION.md").write_text("# AI-Mentor\n\nBe nice.\n")
    with pytest.raises(MissionError, match="MENTOR_MISSION.md has no rules"):
        load_mission("demo", root)


def test_unknown_mission_names_the_available_ones(tmp_path):
    root = missions(
        tmp_path,
        alpha=FRONT.format(metric="accuracy", overrides="[]"),
        beta=FRONT.format(metric="accuracy", overrides="[]"),
    )
    with pytest.raises(MissionError, match=r"unknown mission 'gamma'; available missions: alpha, beta"):
        load_mission("gamma", root)
    with pytest.raises(MissionError, match="unknown mission"):
        load_mission("../missions/alpha", root)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("# no front matter\n", "must start with YAML front matter"),
        ("---\ndirection: maximize\n---\nbody\n", "metric: Field required"),
        ("---\nmetric: loss\ndirection: maximize\n---\nbody\n", "metric: Input should be"),
        ("---\nmetric: accuracy\ndirection: up\n---\nbody\n", "direction"),
        ("---\nmetric: accuracy\ndirection: maximize\nseed: 3\n---\nbody\n", "seed: Extra inputs"),
        ("---\nmetric: [accuracy\n---\nbody\n", "not valid YAML"),
    ],
)
def test_bad_front_matter_is_one_clear_error(tmp_path, text, match):
    with pytest.raises(MissionError, match=match):
        load_mission("bad", missions(tmp_path, bad=text))
