"""The decision contracts accept what the loop needs and refuse malformed LLM output."""

import json

import pytest
from pydantic import ValidationError

from agentexp.decisions import Action, MentorReview, WorkerDecision, json_schema

GOOD = {
    "action": "train",
    "rationale": "run a1b2 reached 0.91 val_acc with light aug; strong aug should help the confusions 3/8.",
    "run_label": "resnet18_strong-aug.v2",
    "overrides": ["aug=strong", "optim.lr=3e-4"],
    "monitor_seconds": 120,
    "strategy_dimension": "augmentation",
    "housekeeping": {
        "todo_new": ["try mixup"],
        "notes_update": "strong aug next",
        "resolve_shared_todo_ids": [3],
    },
}


def with_(**changes):
    return json.dumps({**GOOD, **changes})


def test_good_decision_parses_from_json():
    decision = WorkerDecision.model_validate_json(json.dumps(GOOD))
    assert decision.action is Action.TRAIN
    assert decision.overrides == ["aug=strong", "optim.lr=3e-4"]
    assert decision.housekeeping.resolve_shared_todo_ids == [3]


@pytest.mark.parametrize(
    "raw, names",
    [
        ("{not json", "json"),
        (with_(extra_field=1), "extra_field"),
        (with_(housekeeping={"obey_me": "rm -rf"}), "obey_me"),
        (with_(rationale="x" * 2001), "rationale"),
        (with_(rationale=""), "rationale"),
        (with_(action="explode"), "action"),
        (with_(run_label="../../etc"), "run_label"),
        (with_(run_label="a/b/c"), "run_label"),
        (with_(run_label="abc\u0000def"), "run_label"),
        (with_(run_label="has space"), "run_label"),
        (with_(run_label="abc\n"), "run_label"),
        (with_(run_label="ab"), "run_label"),
        (with_(run_label="x" * 81), "run_label"),
        (with_(run_label=None), "run_label"),
        (with_(strategy_dimension=None), "strategy_dimension"),
        (with_(strategy_dimension="vibes"), "strategy_dimension"),
        (with_(overrides=["optim.lr=1e-3"] * 21), "overrides"),
        (with_(overrides=["model.name=" + "a" * 200]), "overrides"),
        (with_(overrides="optim.lr=1e-3"), "overrides"),
        (with_(monitor_seconds="soon"), "monitor_seconds"),
        (with_(housekeeping={"notes_update": "n" * 2001}), "notes_update"),
        (with_(housekeeping={"todo_new": ["t" * 301]}), "todo_new"),
        (with_(housekeeping={"resolve_shared_todo_ids": list(range(11))}), "resolve_shared_todo_ids"),
    ],
)
def test_malformed_worker_output_is_invalid(raw, names):
    with pytest.raises(ValidationError) as err:
        WorkerDecision.model_validate_json(raw)
    assert names in str(err.value).lower()


def test_non_train_decisions_need_no_label():
    decision = WorkerDecision(action="wait", rationale="the run is still in its second epoch")
    assert decision.run_label is None and decision.overrides == []


def test_todos_beyond_two_are_cut_not_rejected():
    decision = WorkerDecision.model_validate_json(with_(housekeeping={"todo_new": ["a", "b", "c", "d"]}))
    assert decision.housekeeping.todo_new == ["a", "b"]


def test_negative_monitor_seconds_are_cut_to_zero():
    assert WorkerDecision.model_validate_json(with_(monitor_seconds=-5)).monitor_seconds == 0
    assert WorkerDecision.model_validate_json(with_(monitor_seconds=10**9)).monitor_seconds == 10**9


def test_mentor_review_with_replacement():
    review = MentorReview.model_validate(
        {
            "verdict": "off_track",
            "rationale": "three runs changed only the lr and none improved on 0.91",
            "critical_question": "Why not a different architecture?",
            "replacement": GOOD,
            "todo": "compare convnext_atto",
            "architecture_alternatives": ["convnext_atto", "regnetx_002.pycls_in1k"],
        }
    )
    assert review.replacement.run_label == "resnet18_strong-aug.v2"


@pytest.mark.parametrize(
    "changes, names",
    [
        ({"verdict": "continue"}, "verdict"),
        ({"critical_question": "?" * 501}, "critical_question"),
        ({"todo": "t" * 301}, "todo"),
        ({"architecture_alternatives": ["a", "b", "c", "d"]}, "architecture_alternatives"),
        ({"architecture_alternatives": ["resnet18; rm -rf /"]}, "architecture_alternatives"),
        ({"replacement": {**GOOD, "run_label": "a/b"}}, "run_label"),
        ({"questions": ["a", "b"]}, "questions"),
    ],
)
def test_malformed_mentor_output_is_invalid(changes, names):
    with pytest.raises(ValidationError) as err:
        MentorReview.model_validate({"verdict": "on_track", "rationale": "improving", **changes})
    assert names in str(err.value)


def test_json_schema_forbids_unknown_fields_and_describes_fields():
    schema = json_schema(WorkerDecision)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"action", "rationale"}
    assert "required for train" in schema["properties"]["run_label"]["description"]
    assert schema["$defs"]["Housekeeping"]["properties"]["todo_new"]["maxItems"] == 2
    mentor = json_schema(MentorReview)
    assert mentor["properties"]["verdict"]["enum"] == ["on_track", "off_track"]
    assert mentor["$defs"]["WorkerDecision"]["additionalProperties"] is False
