"""Context: the structured dict backends read and the prompt-only tails, focus, storyline and log tail."""

import json
import math

import pytest

from agentexp import context, tracking
from agentexp.mission import MISSIONS_DIR, load_mission
from agentexp.signals import CycleSummary, Signals
from agentexp.todos import TodoQueue

CALM = Signals(
    research_priority=0.2, non_training_priority=0.1, breakout_priority=0.1, todo_pressure=0.0, stall_cycles=0
)
STALLED = CALM.model_copy(update={"breakout_priority": 0.8, "stall_cycles": 7})
FAILING = CALM.model_copy(update={"non_training_priority": 0.67})


def run(
    label: str, metric: float | None, status: str = "FINISHED", cycle: int | None = 1, config: str = ""
) -> dict:
    """A training run as tracking.run_table (and so the tracker) gives it."""
    tags = {tracking.OVERRIDES: json.dumps([f"x={config or label}", "trainer.seed=1"])}
    if cycle is not None:
        tags[tracking.CYCLE_TRACE_ID] = f"c{cycle:05d}-abcdef12"
    metrics = {"best_val_acc": metric} if metric is not None else {}
    return {
        "run_id": f"id-{label}",
        "run_name": label,
        "status": status,
        "start_time": 0,
        "end_time": None,
        "metrics": metrics,
        "params": {},
        "tags": tags,
    }


def summary(cycle: int, outcome: str = "finished", metric: float | None = 0.9) -> CycleSummary:
    return CycleSummary(
        cycle=cycle,
        action="train",
        run_label=f"r{cycle}",
        strategy_dimension="loss",
        outcome=outcome,
        metric=metric,
    )


@pytest.fixture(scope="module")
def mission():
    return load_mission("digits", MISSIONS_DIR)


def build(ws, mission, runs=(), history=(), signals=CALM, **kwargs) -> context.Context:
    defaults = {"cycle": len(history) + 1, "active_runs": [], "deadline": None}
    view = context.RunView(list(runs), mission.summary_key)
    return context.build(ws, view, list(history), signals, mission, **{**defaults, **kwargs})


def test_structured_context_has_exactly_the_contract_shape(ws, mission):
    runs = [run("a", 0.8, cycle=None), run("b", None, status="RUNNING", cycle=2)]
    ctx = build(
        ws,
        mission,
        runs,
        [summary(1)],
        active_runs=["b"],
        deadline="2026-12-01 18:00",
        decision={"action": "wait"},
    )
    s = ctx.structured
    assert set(s) == {
        "cycle",
        "mission",
        "metric",
        "runs",
        "active_runs",
        "max_concurrent",
        "code",
        "gpu",
        "leaderboard",
        "signals",
        "history",
        "deadline",
        "decision",
    }
    assert s["gpu"] == []  # no GPU slots: nothing to show
    assert (s["cycle"], s["mission"], s["active_runs"], s["deadline"]) == (
        2,
        "digits",
        ["b"],
        "2026-12-01 18:00",
    )
    assert s["metric"] == {"key": "val_acc", "summary": "best_val_acc", "direction": "maximize"}
    assert s["runs"][0] == {
        "run_id": "id-a",
        "run_label": "a",
        "status": "FINISHED",
        "overrides": ["x=a", "trainer.seed=1"],
        "metric": 0.8,
        "cycle": None,
        "pruned": False,
    }
    assert s["runs"][1]["cycle"] == 2 and s["max_concurrent"] == 1
    assert s["leaderboard"] == ctx.leaderboard and [e["run_label"] for e in s["leaderboard"]] == ["a"]
    assert set(s["signals"]) == {
        "research_priority",
        "non_training_priority",
        "breakout_priority",
        "todo_pressure",
        "stall_cycles",
        "stall_trainings",
    }
    assert s["history"] == [
        {
            "cycle": 1,
            "action": "train",
            "run_label": "r1",
            "strategy_dimension": "loss",
            "outcome": "finished",
            "metric": 0.9,
        }
    ]
    assert s["decision"] == {"action": "wait"} and ctx.deadline == "2026-12-01 18:00"
    json.dumps(s, allow_nan=False)  # backends and artifacts get strict JSON


def test_non_finite_metrics_become_none(ws, mission):
    ctx = build(ws, mission, [run("nan", math.nan)], [summary(1, metric=math.inf)])
    assert ctx.structured["runs"][0]["metric"] is None and ctx.structured["history"][0]["metric"] is None
    assert ctx.leaderboard == []


def test_leaderboard_is_the_top_five_finished_runs_in_the_missions_direction(ws, mission):
    runs = [run(f"r{i}", i / 10) for i in range(1, 9)] + [
        run("crash", 0.99, "FAILED"),
        run("live", 0.98, "RUNNING"),
    ]
    board = build(ws, mission, runs).leaderboard
    assert [r["run_label"] for r in board] == ["r8", "r7", "r6", "r5", "r4"]
    assert board[0] == {
        "rank": 1,
        "run_id": "id-r8",
        "run_label": "r8",
        "mean": 0.8,
        "std": None,
        "n": 1,
        "overrides": ["x=r8"],
    }
    lower = mission.model_copy(update={"direction": "minimize"})
    assert [r["run_label"] for r in build(ws, lower, runs).leaderboard][:2] == ["r1", "r2"]


def test_leaderboard_groups_seed_runs_of_one_configuration(ws, mission):
    runs = [run("lucky", 0.9, config="a"), run("unlucky", 0.5, config="a"), run("steady", 0.8, config="b")]
    board = build(ws, mission, runs).leaderboard
    assert [(e["run_label"], e["n"]) for e in board] == [("steady", 1), ("lucky", 2)]
    assert board[1]["mean"] == pytest.approx(0.7) and board[1]["std"] == pytest.approx(0.2828, abs=1e-4)


def test_tails_are_the_end_of_long_notes_not_the_start(ws, mission):
    for cycle in range(1, 40):
        ws.append_workpad("Notes", cycle, f"note-{cycle:03d} " + "x" * 100)
        ws.append_mentor_note(cycle, f"mentor-{cycle:03d} " + "y" * 100)
    ctx = build(ws, mission)
    assert "note-039" in ctx.workpad_tail and "note-001" not in ctx.workpad_tail
    assert "mentor-039" in ctx.mentor_notes_tail and "mentor-001" not in ctx.mentor_notes_tail
    assert len(ctx.workpad_tail) <= context.WORKPAD_CHARS + 100
    assert len(ctx.mentor_notes_tail) <= context.MENTOR_NOTES_CHARS


def test_an_empty_workspace_gives_empty_tails(ws, mission):
    ctx = build(ws, mission)
    assert (ctx.workpad_tail, ctx.mentor_notes_tail, ctx.todo_focus, ctx.storyline) == ("", "", [], [])


def test_todo_focus_shows_the_oldest_and_newest_open_items(ws, mission):
    queue = TodoQueue(ws.artifacts)
    for cycle, text in enumerate(["first", "second", "third", "fourth"], 1):
        queue.add([text], "worker", cycle)
    queue.resolve([1])
    assert build(ws, mission).todo_focus == ["#2 (worker, cycle 2) second", "#4 (worker, cycle 4) fourth"]


@pytest.mark.parametrize(("signals", "shown"), [(CALM, False), (STALLED, True), (FAILING, True)])
def test_storyline_only_when_stall_or_failure_signals_are_high(ws, mission, signals, shown):
    for cycle in range(1, 20):
        ws.append_storyline(cycle, f"t{cycle}", f"story of cycle {cycle}")
    storyline = build(ws, mission, signals=signals).storyline
    if shown:
        assert len(storyline) == context.STORYLINE_LINES and "story of cycle 19" in storyline[-1]
    else:
        assert storyline == []


def test_the_failed_log_tail_is_the_end_of_the_tail_the_loop_gives(ws, mission):
    log = "\n".join(f"line {i}" for i in range(2000)) + "\nRuntimeError: CUDA out of memory\n"
    tail = build(ws, mission, [run("a", 0.5)], [summary(1)], failed_log_tail=log).failed_log_tail
    assert tail.endswith("RuntimeError: CUDA out of memory") and "line 0\n" not in tail
    assert len(tail) <= context.LOG_TAIL_CHARS
    assert build(ws, mission, [], [summary(1, "failed", None)]).failed_log_tail == ""


def test_history_keeps_only_the_recent_cycles(ws, mission):
    history = [summary(c) for c in range(1, 41)]
    cycles = [h["cycle"] for h in build(ws, mission, history=history).structured["history"]]
    assert cycles == list(range(41 - context.HISTORY_CYCLES, 41))


def test_mlflow_rows_without_a_name_or_still_scheduled_are_accepted(ws, mission):
    rows = [run("a", None) | {"run_name": None, "status": "SCHEDULED"}]
    (info,) = build(ws, mission, rows).structured["runs"]
    assert (info["run_label"], info["status"]) == ("id-a", "RUNNING")
