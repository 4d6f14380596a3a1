"""Priority signals: table tests from a cycle history to the values the agents see."""

import pytest

from agentexp.signals import CycleSummary, Signals, compute, stall_cycles


def train(cycle: int, dim: str, outcome: str = "finished", metric: float | None = None) -> CycleSummary:
    return CycleSummary(
        cycle=cycle,
        action="train",
        run_label=f"run-{cycle}",
        strategy_dimension=dim,
        outcome=outcome,
        metric=metric,
    )


def other(cycle: int, action: str, outcome: str, metric: float | None = None) -> CycleSummary:
    return CycleSummary(cycle=cycle, action=action, outcome=outcome, metric=metric)


DIMS = ["augmentation", "loss", "model_arch", "optimization", "data_sampling"]

IMPROVING = [train(c, DIMS[c % 5], metric=0.5 + 0.05 * c) for c in range(1, 9)]
STALLED_ONE_DIM = [train(1, "optimization", metric=0.9)] + [
    train(c, "optimization", metric=0.8) for c in range(2, 11)
]
FAILING = [train(1, "loss", metric=0.7)] + [train(c, "model_arch", outcome="failed") for c in range(2, 5)]
NO_ANALYSIS = [train(c, DIMS[c % 5], metric=0.5 + 0.01 * c) for c in range(1, 11)]
WITH_ANALYSIS = NO_ANALYSIS[:-1] + [other(10, "analyze", "analyzed")]


def _bounded(signals: Signals) -> bool:
    values = [signals.research_priority, signals.non_training_priority, signals.breakout_priority]
    return all(0.0 <= v <= 1.0 for v in [*values, signals.todo_pressure])


@pytest.mark.parametrize(
    ("history", "todos", "expect"),
    [
        (
            [],
            0,
            {
                "research_priority": 1.0,
                "breakout_priority": 0.0,
                "non_training_priority": 0.0,
                "stall_cycles": 0,
            },
        ),
        (IMPROVING, 0, {"breakout_priority": 0.0, "stall_cycles": 0, "research_priority": 0.0}),
        (STALLED_ONE_DIM, 0, {"breakout_priority": 1.0, "stall_cycles": 9, "research_priority": 0.8}),
        (FAILING, 0, {"non_training_priority": 1.0}),
        (NO_ANALYSIS, 0, {"non_training_priority": 1.0}),
        (WITH_ANALYSIS, 0, {"non_training_priority": 0.0}),
        ([], 5, {"todo_pressure": 0.5}),
        ([], 40, {"todo_pressure": 1.0}),
    ],
    ids=[
        "empty",
        "improving",
        "stalled-one-dim",
        "failing",
        "no-analysis",
        "after-analysis",
        "todos",
        "todos-cap",
    ],
)
def test_signals_table(history: list[CycleSummary], todos: int, expect: dict) -> None:
    signals = compute(history, open_todos=todos)
    assert _bounded(signals)
    assert {key: getattr(signals, key) for key in expect} == pytest.approx(expect)


def test_breakout_rises_with_stall_length_and_with_repetition() -> None:
    base = [train(1, "loss", metric=0.9)]
    short = compute(base + [train(2, "loss", metric=0.5)], 0).breakout_priority
    long = compute(base + [train(c, "augmentation", metric=0.5) for c in range(2, 6)], 0).breakout_priority
    varied = [train(c, DIMS[c % 5], metric=0.5) for c in range(2, 6)]
    assert short < long
    assert compute(base + varied, 0).breakout_priority < long


def test_research_stays_high_when_few_dimensions_tried() -> None:
    narrow = [train(c, "optimization", metric=0.5 + 0.01 * c) for c in range(1, 12)]
    broad = [train(c, DIMS[c % 5], metric=0.5 + 0.01 * c) for c in range(1, 12)]
    assert compute(narrow, 0).research_priority > 0.5 > compute(broad, 0).research_priority


def test_gate_rejections_count_as_failures_until_a_run_finishes() -> None:
    rejected = [other(c, "wait", "downgraded") for c in range(1, 4)]
    assert compute(rejected, 0).non_training_priority == 1.0
    recovered = rejected + [train(4, "loss", outcome="finished", metric=0.6)]
    assert compute(recovered, 0).non_training_priority == 0.0


def test_stall_respects_the_metric_direction() -> None:
    losses = [train(1, "loss", metric=0.3), train(2, "loss", metric=0.2), train(3, "loss", metric=0.4)]
    assert stall_cycles(losses, "minimize") == 1
    assert stall_cycles(losses, "maximize") == 0
    waits = [other(c, "wait", "waited") for c in range(1, 4)]
    assert stall_cycles(waits) == 0  # nothing to improve on before the first metric
