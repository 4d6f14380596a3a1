"""The offline planner backend: Optuna proposals from the search space and the rule-based mentor."""

from __future__ import annotations

import math
import re
import statistics
import zlib
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from helpers import compose_train
from omegaconf import OmegaConf

from agentexp import noise
from agentexp.config import ConfigError, compose_loop, with_mission_space
from agentexp.decisions import Action, MentorReview, WorkerDecision, json_schema
from agentexp.gate import GateConfig, check, check_composes
from agentexp.llm import LLMError, LLMRequest, build_backend, parse_llm_config
from agentexp.llm.planner import PlannerBackend
from agentexp.llm.planner.evidence import Evidence, PlannerContext
from agentexp.llm.planner.space import SearchSpace
from agentexp.mission import load_mission
from agentexp.pruning import behind
from agentexp.signals import CycleSummary, compute, stall_cycles, stall_trainings

CONF = Path(__file__).resolve().parents[1] / "conf"
SPACE = compose_loop(["llm=planner"]).llm.space  # the shipped space, filled with the gate's choices
MODELS = SPACE["model"]["choices"]
LABEL = re.compile(r"^[A-Za-z0-9._-]{3,80}$")


def planner(seed: int = 0, space: dict | None = None) -> PlannerBackend:
    return PlannerBackend(parse_llm_config({"name": "planner", "space": space or SPACE, "seed": seed}))


def context(runs: list[dict], cycle: int | None = None, **extra) -> dict:
    base = {
        "cycle": cycle or len(runs) + 1,
        "mission": "digits",
        "metric": {"key": "val_acc", "summary": "best_val_acc", "direction": "maximize"},
        "runs": runs,
        "active_runs": [],
        "signals": {
            "research_priority": 0.0,
            "non_training_priority": 0.0,
            "breakout_priority": 0.0,
            "todo_pressure": 0.0,
            "stall_cycles": 0,
        },
        "history": [],
        "deadline": None,
        "decision": None,
    }
    return {**base, **extra}


def work(backend: PlannerBackend, ctx: dict) -> WorkerDecision:
    request = LLMRequest(role="worker", prompt="decide", json_schema=json_schema(WorkerDecision), context=ctx)
    response = backend.decide(request)
    assert response.model == "planner" and response.usage.input_tokens == response.usage.cost_usd == 0
    return WorkerDecision.model_validate_json(response.raw)


def mentor(backend: PlannerBackend, ctx: dict) -> MentorReview:
    request = LLMRequest(role="mentor", prompt="review", json_schema=json_schema(MentorReview), context=ctx)
    return MentorReview.model_validate_json(backend.decide(request).raw)


def run(n: int, metric: float | None, status: str = "FINISHED", **params) -> dict:
    config = {
        "model": "resnet18",
        "optim.lr": 1e-3,
        "optim.weight_decay": 0.05,
        "aug": "light",
        "loss": "ce",
        "optim": "adamw",
        **{k.replace("__", "."): v for k, v in params.items()},
    }
    return {
        "run_id": f"{n:04d}abcd" + "0" * 24,
        "run_label": f"run-{n:02d}",
        "status": status,
        "overrides": [f"{k}={v}" for k, v in config.items()],
        "metric": metric,
        "cycle": n,
    }


def seed_of(decision) -> int | None:
    overrides = decision["overrides"] if isinstance(decision, dict) else decision.overrides
    seeds = [int(o.split("=")[1]) for o in overrides if o.startswith("trainer.seed=")]
    return seeds[-1] if seeds else None


def config_of(overrides: list[str]) -> dict:
    config = SearchSpace(SPACE).parse_overrides(overrides)
    assert config is not None, overrides
    return config


def analyzed(cycle: int) -> dict:
    return {
        "cycle": cycle,
        "action": "analyze",
        "run_label": None,
        "strategy_dimension": None,
        "outcome": "ok",
        "metric": None,
    }


def finished(n: int, decision: WorkerDecision, metric: float) -> dict:
    return {
        "run_id": f"{n:032x}",
        "run_label": decision.run_label,
        "status": "FINISHED",
        "overrides": decision.overrides,
        "metric": metric,
        "cycle": n,
    }


def test_eight_cycles_propose_distinct_valid_configs_that_pass_the_gate():
    backend, runs, labels, seen = planner(), [], set(), set()
    gate = GateConfig.model_validate(OmegaConf.to_container(OmegaConf.load(CONF / "gate" / "default.yaml")))
    for cycle in range(1, 9):
        decision = work(backend, context(runs, cycle))
        config = (tuple(sorted(config_of(decision.overrides).items())), seed_of(decision))
        assert decision.action == Action.TRAIN and decision.strategy_dimension is not None
        assert {o.split("=")[0] for o in decision.overrides} <= set(SPACE) | {"trainer.seed"}
        assert LABEL.match(decision.run_label) and decision.run_label.startswith(f"p{cycle:02d}-")
        assert config not in seen and decision.run_label not in labels
        assert check(decision, gate).passed, check(decision, gate).violations
        seen.add(config)
        labels.add(decision.run_label)
        runs.append(finished(cycle, decision, 0.8 + 0.01 * cycle))
    assert check_composes(decision.overrides) == []


def test_never_reproposes_a_finished_or_running_config_even_in_a_tiny_space():
    space = {
        "model": {"choices": ["resnet18", "efficientnet_b0"], "default": "resnet18"},
        "aug": {"choices": ["none", "light"], "default": "light"},
    }
    backend, runs = planner(space=space), []
    for cycle in range(1, 6):  # the default, its noise seed, then the three other configs
        decision = work(backend, context(runs, cycle, active_runs=[]))
        assert decision.action == Action.TRAIN
        runs.append(finished(cycle, decision, 0.5) | {"status": "RUNNING" if cycle == 5 else "FINISHED"})
    assert len({tuple(config_of(r["overrides"]).items()) for r in runs}) == 4 and seed_of(runs[1]) == 1
    decision = work(backend, context(runs, 6))
    assert decision.action == Action.ANALYZE  # all four configs tried: summarize first ...
    assert work(backend, context(runs, 7, history=[analyzed(6)])).action == Action.FINISH  # ... then stop


def test_rationale_cites_the_best_run_id_and_its_metric():
    runs = [
        run(1, 0.9312),
        run(2, 0.9611, model="efficientnet_b0", optim__lr=3e-4),
        run(3, 0.9504, aug="strong"),
    ]
    decision = work(planner(), context(runs))
    assert runs[1]["run_id"][:8] in decision.rationale and "0.9611" in decision.rationale
    assert "seed-noise band" in decision.rationale  # no configuration has two seeds yet


def test_minimize_direction_cites_the_lowest_metric_as_best():
    runs = [run(1, 0.31), run(2, 0.12, aug="strong"), run(3, 0.25, loss="smooth")]
    metric = {"key": "val_loss", "summary": "best_val_loss", "direction": "minimize"}
    decision = work(planner(), context(runs, metric=metric))
    assert decision.rationale.startswith(f"Best so far run {runs[1]['run_id'][:8]}")


def test_warm_start_proposes_closer_to_the_best_learning_rate_than_random():
    # 10 configurations with lr spread over the range (the first and the best with a second seed: the band
    # is measured, the incumbent confirmed, TPE proposes); the metric peaks at lr = 1e-3, the latest.
    lrs = [1e-4, 3e-3, 2e-4, 2.5e-3, 3e-4, 2e-3, 5e-4, 1.4e-3, 7e-4, 1e-3]
    runs = [run(i, 0.95 - 0.2 * math.log10(lr / 1e-3) ** 2, optim__lr=lr) for i, lr in enumerate(lrs)]
    repeat = run(10, runs[0]["metric"] + 0.001, optim__lr=lrs[0])
    runs.append(repeat | {"overrides": repeat["overrides"] + ["trainer.seed=1"]})
    confirmed = run(11, runs[-2]["metric"] - 0.001, optim__lr=lrs[-1])  # the new incumbent's second seed
    runs.append(confirmed | {"overrides": confirmed["overrides"] + ["trainer.seed=1"]})
    seeds = range(100)  # the first proposal varies a lot with the seed: compare means over many
    decisions = [work(planner(seed), context(runs)) for seed in seeds]
    assert all("TPE proposes after 10 ended configurations" in d.rationale for d in decisions)
    planned = [config_of(d.overrides)["optim.lr"] for d in decisions]
    lr_range = {"lr": optuna.distributions.FloatDistribution(1e-4, 3e-2, log=True)}
    randomly = [
        optuna.create_study(sampler=optuna.samplers.RandomSampler(seed)).ask(lr_range).params["lr"]
        for seed in seeds
    ]
    decades_off = lambda lrs: sum(abs(math.log10(lr / 1e-3)) for lr in lrs) / len(lrs)  # noqa: E731
    # 9 searched dimensions and 10 configurations: TPE's edge on lr alone is smaller than in a small space
    assert decades_off(planned) < 0.9 * decades_off(randomly), (decades_off(planned), decades_off(randomly))


MODEL_BONUS = {"efficientnet_b0": 0.05}  # one clearly best architecture


def synthetic(config: dict) -> float:
    """A smooth bowl in log lr and log weight decay, a best model, and small deterministic noise."""
    x = math.log10(config["optim.lr"] / 1e-3)
    w = math.log10(config["optim.weight_decay"] / 1e-2)
    noise = zlib.crc32(repr(sorted(config.items())).encode()) / 2**32 - 0.5
    return 0.9 - 0.05 * x * x - 0.02 * w * w + MODEL_BONUS.get(config["model"], 0.0) + 0.004 * noise


def best_by_planner(seed: int, budget: int) -> float:
    backend, runs = planner(seed), []
    for cycle in range(1, budget + 1):
        decision = work(backend, context(runs, cycle))
        runs.append(finished(cycle, decision, synthetic(config_of(decision.overrides))))
    return max(r["metric"] for r in runs)


def best_by_random(seed: int, budget: int) -> float:
    space = SearchSpace(SPACE)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(budget):
        trial = study.ask(space.distributions())
        study.tell(trial, synthetic(space.snap(trial.params)))
    return study.best_value


def test_planner_beats_random_search_at_equal_budget():
    # Measured over seeds 0..59: mean best 0.937 vs 0.928, the planner ahead in 72% of the duels (it spends
    # runs on seed noise and confirmations that random search does not; this landscape is almost noiseless).
    seeds = range(20)
    planned, randomly = ([best(seed, 20) for seed in seeds] for best in (best_by_planner, best_by_random))
    assert statistics.fmean(planned) > statistics.fmean(randomly) + 0.004, (planned, randomly)


def test_busy_slot_means_wait():
    decision = work(planner(), context([run(1, None, status="RUNNING")], active_runs=["run-01"]))
    assert decision.action == Action.WAIT and decision.monitor_seconds > 0 and "run-01" in decision.rationale


def test_high_non_training_priority_analyzes_once_with_per_dimension_notes():
    runs = [run(1, 0.91), run(2, 0.96, model="efficientnet_b0"), run(3, 0.93, aug="strong")]
    signals = {"non_training_priority": 0.9, "stall_cycles": 0}
    decision = work(planner(), context(runs, signals=signals))
    notes = decision.housekeeping.notes_update
    assert decision.action == Action.ANALYZE
    assert "model_arch / model: efficientnet_b0 best 0.96 (1 run); resnet18 best 0.93 (2 runs)" in notes
    assert "augmentation / aug: light best 0.96 (2 runs); strong best 0.93 (1 run)" in notes
    assert work(planner(), context(runs, signals=signals, history=[analyzed(4)])).action == Action.TRAIN


LRS = [5e-4, 2e-3, 3e-3]


def test_a_long_stagnant_stretch_moves_the_incumbent_to_an_untried_model():
    seeded = run(2, 0.92) | {"overrides": run(2, 0.92)["overrides"] + ["trainer.seed=1"]}
    runs = [run(1, 0.93), seeded] + [
        run(3 + i, 0.90, optim__lr=lr) for i, lr in enumerate([5e-4, 2e-3, 3e-3])
    ]
    calm = work(planner(), context(runs))  # 3 challengers failed: not yet a breakout
    runs.append(run(6, 0.91, model="mobilenetv3_small_100"))
    pushed = work(planner(), context(runs))
    assert config_of(pushed.overrides)["model"] not in {"resnet18", "mobilenetv3_small_100"}
    assert config_of(pushed.overrides) | {"model": "resnet18"} == config_of(runs[0]["overrides"])
    assert pushed.strategy_dimension == "model_arch" and "4 configurations in a row" in pushed.rationale
    assert "in a row" not in calm.rationale
    pruned = run(6, None, "KILLED", model="mobilenetv3_small_100") | {"pruned": True}  # stopped behind
    also = work(planner(), context([*runs[:-1], pruned]))
    assert "4 configurations in a row" in also.rationale


def test_runs_outside_the_space_are_left_out_and_unsearched_keys_are_ignored():
    alien = run(1, 0.99, model="resnet34")  # not a choice of the space
    shared = run(2, 0.90) | {"overrides": run(2, 0.90)["overrides"] + ["trainer.epochs=3"]}
    decision = work(planner(), context([alien, shared]))
    assert (
        alien["run_id"][:8] not in decision.rationale
        and "1 run(s) outside the search space" in decision.rationale
    )
    assert f"run {shared['run_id'][:8]} (run-02) 0.9" in decision.rationale


def stagnant_runs() -> list[dict]:
    return [
        run(1, 0.90),
        run(2, 0.95, optim__lr=5e-4),
        run(3, 0.94, optim__lr=7e-4),
        run(4, 0.93, aug="strong"),
        run(5, 0.945, model="mobilenetv3_small_100"),
    ]


def test_mentor_challenges_a_stagnant_stretch_with_an_untried_architecture():
    runs = stagnant_runs()
    decision = {
        "action": "train",
        "overrides": ["model=resnet18", "optim.lr=0.0006"],
        "run_label": "p06-x",
        "rationale": "tune lr",
        "strategy_dimension": "optimization",
    }
    review = mentor(planner(), context(runs, decision=decision))
    assert review.verdict == "off_track"
    (alternative,) = review.architecture_alternatives
    assert alternative in MODELS and alternative not in {"resnet18", "mobilenetv3_small_100"}
    assert runs[1]["run_id"][:8] in review.critical_question and "0.95" in review.critical_question
    replacement = review.replacement
    assert replacement.action == Action.TRAIN and f"model={alternative}" in replacement.overrides
    assert config_of(replacement.overrides) == config_of(runs[1]["overrides"]) | {"model": alternative}
    assert review.todo and alternative in review.todo


def test_mentor_challenges_on_the_stall_signal_without_replacing_a_busy_slot():
    runs = [run(1, 0.90), run(2, None, status="RUNNING")]
    ctx = context(
        runs,
        signals={"stall_trainings": 4},
        active_runs=["run-02"],
        decision={"action": "wait", "rationale": "training"},
    )
    review = mentor(planner(), ctx)
    assert review.verdict == "off_track" and "4 trainings" in review.critical_question
    assert review.architecture_alternatives and review.replacement is None


def test_mentor_stays_on_track_while_the_metric_improves():
    runs = [run(1, 0.90), run(2, 0.92, optim__lr=5e-4), run(3, 0.95, optim__lr=7e-4)]
    review = mentor(planner(), context(runs, decision={"action": "train", "overrides": []}))
    assert review.verdict == "on_track" and review.todo is None and review.replacement is None
    assert runs[2]["run_id"][:8] in review.rationale and "0.95" in review.rationale


def test_mentor_lets_a_worker_already_trying_an_untried_model_continue():
    decision = {"action": "train", "overrides": ["model=convnext_atto"], "rationale": "new family"}
    review = mentor(planner(), context(stagnant_runs(), decision=decision))
    assert review.verdict == "on_track" and review.todo is None


def test_the_shipped_config_builds_the_planner(tmp_path):
    cfg = compose_loop(["llm=planner"]).llm
    decision = work(build_backend(cfg, tmp_path), context([]))
    assert decision.action == Action.TRAIN and config_of(decision.overrides)


@pytest.mark.parametrize(
    "space",
    [
        {},
        {"optim.lr": {"low": 1e-2, "high": 1e-3, "default": 1e-3}},
        {"hydra.run.dir": {"choices": ["a"], "default": "a"}},
    ],
)
def test_a_bad_search_space_is_one_clear_error(space):
    with pytest.raises(LLMError, match="search.space"):
        PlannerBackend(parse_llm_config({"name": "planner", "space": space}))


def test_an_unreadable_context_is_one_clear_error():
    request = LLMRequest(role="worker", prompt="decide", json_schema={}, context={"runs": "not a list"})
    with pytest.raises(LLMError, match="cannot read the context"):
        planner().decide(request)


# ---- noise-aware selection, budget, space -------------------------------------------------------
def seeded(n: int, metric: float, seed: int, **params) -> dict:
    found = run(n, metric, **params)
    return found | {"overrides": found["overrides"] + [f"trainer.seed={seed}"]}


def test_noise_band_is_the_largest_seed_spread_and_beats_needs_more_than_it():
    groups = [SimpleNamespace(n=1, std=None), SimpleNamespace(n=3, std=0.02), SimpleNamespace(n=2, std=0.05)]
    assert noise.band(groups) == 0.05 and noise.band(groups[:1]) == 0.0
    assert noise.beats(0.86, 0.80, 0.05, "maximize") and not noise.beats(0.84, 0.80, 0.05, "maximize")
    assert noise.beats(0.30, 0.40, 0.05, "minimize") and not noise.beats(0.38, 0.40, 0.05, "minimize")


def test_the_default_config_comes_first_then_a_second_seed_of_it_measures_the_noise():
    first = work(planner(), context([]))
    assert config_of(first.overrides) == SearchSpace(SPACE).defaults() and seed_of(first) is None
    assert "default config" in first.rationale
    second = work(planner(), context([finished(1, first, 0.8)]))
    assert (
        second.overrides == [*first.overrides, "trainer.seed=1"] and second.strategy_dimension == "evaluation"
    )


def test_a_challenger_within_the_noise_band_is_confirmed_before_it_replaces_the_incumbent():
    incumbent = [run(1, 0.80), seeded(2, 0.84, 1)]  # mean 0.82, seed band 0.028
    close = run(3, 0.835, optim__lr=3e-3)  # ahead by 0.015: within the band
    decision = work(planner(), context([*incumbent, close]))
    assert config_of(decision.overrides) == config_of(close["overrides"]) and seed_of(decision) == 1
    assert "confirming" in decision.rationale and decision.rationale.startswith("Best so far run 0001abcd")
    confirmed = seeded(4, 0.83, 1, optim__lr=3e-3)  # mean 0.8325: ahead over two seeds, it replaces
    after = work(planner(), context([*incumbent, close, confirmed]))
    assert after.rationale.startswith("Best so far run 0003abcd") and seed_of(after) is None
    pruned = seeded(4, None, 1, optim__lr=3e-3) | {"status": "KILLED", "pruned": True}  # fell behind
    after = work(planner(), context([*incumbent, close, pruned]))
    assert "confirming" not in after.rationale and seed_of(after) is None
    refuted = seeded(4, 0.79, 1, optim__lr=3e-3)  # mean 0.8125: the incumbent stays, no third seed
    after = work(planner(), context([*incumbent, close, refuted]))
    assert after.rationale.startswith("Best so far run 0001abcd") and seed_of(after) is None
    far = run(3, 0.90, optim__lr=3e-3)  # beyond the band: replaces at once, then gets its own second seed
    after = work(planner(), context([*incumbent, far]))
    assert (
        after.rationale.startswith("Best so far run 0003abcd")
        and "confirming the new incumbent" in after.rationale
    )
    assert config_of(after.overrides) == config_of(far["overrides"]) and seed_of(after) == 1
    lucky = seeded(4, 0.70, 1, optim__lr=3e-3)  # mean 0.80: behind the incumbent 0.82, it hands back
    after = work(planner(), context([*incumbent, far, lucky]))
    assert after.rationale.startswith("Best so far run 0001abcd") and seed_of(after) is None
    behind = seeded(4, None, 1, optim__lr=3e-3) | {"status": "KILLED", "pruned": True}
    after = work(planner(), context([*incumbent, far, behind]))
    assert after.rationale.startswith("Best so far run 0001abcd") and seed_of(after) is None


def test_stall_is_counted_in_trainings_not_in_wait_cycles():
    history = [
        CycleSummary(cycle=1, action="train", outcome="launched", strategy_dimension="optimization"),
        CycleSummary(cycle=2, action="wait", outcome="finished", metric=0.8),
        *(CycleSummary(cycle=c, action="wait", outcome="waited") for c in range(3, 12)),
        CycleSummary(cycle=12, action="train", outcome="launched", strategy_dimension="loss"),
    ]
    assert stall_cycles(history) == 10 and stall_trainings(history) == 1
    signals = compute(history, open_todos=0)
    assert signals.stall_trainings == 1 and signals.breakout_priority < 0.2  # nine waits cost no budget


def test_a_pruned_configuration_counts_as_ended_at_the_worst_finished_value_and_is_never_reproposed():
    finished_runs = [
        run(1, 0.80),
        seeded(2, 0.81, 1),
        run(3, 0.70, optim__lr=3e-3),
        run(4, 0.75, optim__lr=2e-4),
    ]
    pruned = run(5, None, "KILLED", optim__lr=3e-2) | {"pruned": True}
    stopped = run(6, None, "KILLED", optim__lr=2e-2)  # stopped by hand: no evidence about its config
    before = work(planner(), context([*finished_runs, stopped]))
    assert "random start-up sample after 3 ended configurations" in before.rationale
    ctx = PlannerContext.model_validate(context([*finished_runs, stopped, pruned]))
    trials = planner().planner.study(Evidence(ctx, SearchSpace(SPACE))).trials
    assert [(t.params["optim.lr"], t.value) for t in trials] == [
        (1e-3, pytest.approx(0.805)),
        (3e-3, 0.70),
        (2e-4, 0.75),
        (3e-2, 0.70),  # the pruned one, at the worst finished mean
    ]
    decisions = [work(planner(seed), context([*finished_runs, stopped, pruned])) for seed in range(20)]
    assert all("TPE proposes after 4 ended configurations" in d.rationale for d in decisions)
    assert all(config_of(d.overrides)["optim.lr"] not in (3e-2, 2e-2) for d in decisions)


def test_a_training_that_failed_before_opening_its_mlflow_run_is_not_proposed_again():
    # such a training leaves no run in the context: the next cycle sees the same runs
    runs = [run(1, 0.80), seeded(2, 0.81, 1)]
    first, again = (work(planner(), context(runs, cycle=cycle)) for cycle in (3, 4))
    assert first.overrides != again.overrides
    assert work(planner(), context(runs, cycle=3)).overrides == first.overrides  # a restart changes nothing


def test_median_rule_stops_a_run_behind_the_others_at_the_same_epoch():
    others = [[0.6, 0.70, 0.8], [0.5, 0.65, 0.75], [0.55, 0.72, 0.78]]
    assert behind([0.5, 0.55], others, "maximize")  # epoch 1: best so far 0.55 < median 0.70
    assert not behind([0.5, 0.71], others, "maximize")
    assert not behind([0.75, 0.60], others, "maximize")  # its best so far counts, not its last epoch
    assert not behind([0.5, 0.68], others, "maximize", margin=0.05)  # behind, but within the noise band
    assert not behind([0.1], others, "maximize")  # epoch 0 is the warm-up
    assert not behind([0.5, 0.55], others[:2], "maximize")  # two peers: no median trusted yet
    assert not behind([0.5, 0.55, 0.6, 0.6], others, "maximize")  # no peer reached epoch 3
    assert behind([0.9, 0.8], [[1.0, 0.5]] * 3, "minimize") and not behind(
        [0.9, 0.4], [[1.0, 0.5]] * 3, "minimize"
    )


def test_the_shipped_space_covers_what_a_practitioner_searches():
    lr = SPACE["optim.lr"]
    assert lr["low"] <= 1e-4 and lr["high"] >= 3e-2 and lr["log"]
    assert "low" in SPACE["loss.label_smoothing"] and "low" in SPACE["model.drop_rate"]  # floats
    assert set(SPACE["optim"]["choices"]) == {"adamw", "sgd"} and len(SPACE["optim.schedule"]["choices"]) == 3
    assert "resnet10t" in MODELS
    cfg = compose_train(["model=resnet10t", "model.drop_rate=0.2", "optim=sgd", "loss.label_smoothing=0.05"])
    assert (cfg.model.name, cfg.model.drop_rate, cfg.optim.name, cfg.loss.label_smoothing) == (
        "resnet10t",
        0.2,
        "sgd",
        0.05,
    )


def test_a_mission_space_is_merged_and_checked_against_the_gate(tmp_path):
    for name in ("WORKER_MISSION.md", "MENTOR_MISSION.md"):
        (tmp_path / name).write_text((CONF.parent / "missions" / name).read_text())
    (tmp_path / "small").mkdir()
    front = (
        "metric: auroc\ndirection: maximize\n"
        "space:\n  data.image_size: {choices: [32, 64], default: 32}\n  aug: null\n"
    )
    (tmp_path / "small" / "mission.md").write_text(f"---\n{front}---\n# Small\n")
    cfg = with_mission_space(compose_loop(["llm=planner"]), load_mission("small", tmp_path).space)
    assert cfg.llm.space["data.image_size"]["choices"] == [32, 64] and "aug" not in cfg.llm.space
    assert cfg.llm.space["optim.lr"] == SPACE["optim.lr"]
    outside = {"optim.lr": {"low": 1e-6, "high": 1e-2, "log": True, "default": 1e-3}}
    with pytest.raises(ConfigError) as err:
        with_mission_space(compose_loop(["llm=planner"]), outside)
    assert str(err.value) == "llm.space optim.lr low 1e-06 is outside the gate's range 1e-05..1.0"
