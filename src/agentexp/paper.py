"""The paper's facts: counts, budget, data, hardware, figures and limitations, each from the MLflow rows."""

from __future__ import annotations

from collections import Counter

from agentexp import figures, heldout, ranking, story, tracking
from agentexp.ranking import Entry
from agentexp.story import Attempt
from agentexp.tracking import DEVICE, GPU_NAME

PER_CLASS = "evaluation/per_class_report.json"
"""The trainer's per-class report of a run's best epoch."""


def facts(src, k: int, train: list[dict], entries: list[Entry], found: list[Attempt], decisions, loops):
    """Every value the report templates show."""
    finished = ranking.finished(train, src.metric)
    walls = [r["metrics"][ranking.WALL_TIME] for r in train if ranking.WALL_TIME in r["metrics"]]
    starts = [r["start_time"] for r in train if r["start_time"]]
    ends = [r["end_time"] for r in train if r["end_time"]]
    params = [r["params"] for r in train]
    tags = [r["tags"] for r in train]
    tested = heldout.compare(entries, train, tracking.test_metric(src.metric))
    return {
        "src": src,
        "k": k,
        "entries": entries,
        "top": entries[0],
        "table": ranking.markdown_table(entries),
        "common": ranking.common_overrides(entries),
        "split_note": ranking.split_note(train, src.metric),
        "heldout": tested,
        "heldout_table": heldout.markdown_table(tested) if tested else "",
        "heldout_summary": heldout.summary(tested) if tested else "",
        "n_train": len(train),
        "n_finished": len(finished),
        "n_cycles": len(decisions),
        "baseline": next((a for a in found if a.status == "FINISHED" and a.metric is not None), None),
        "dimensions": story.dimensions(found, src.direction),
        "failures": [a for a in found if a.failed],
        "helped": [a for a in found if a.helped],
        "epochs": _counts(p.get("trainer.epochs") for p in params),
        "data": _counts(f"{p.get('data.kind')} at {p.get('data.image_size')} px" for p in params),
        "hardware": _counts(f"{t.get(DEVICE, '?')}, GPU {t.get(GPU_NAME, '?')}" for t in tags),
        "wall_total_s": sum(walls),
        "span_h": (max(ends) - min(starts)) / 3.6e6 if starts and ends else 0.0,
        "llm_calls": int(sum(d["metrics"].get("llm_calls", 0) for d in decisions)),
        "cost_usd": sum(d["metrics"].get("cost_usd", 0.0) for d in decisions),
        "llms": sorted({r["params"]["llm"] for r in loops if r["params"].get("llm")}),
    }


def _counts(values) -> str:
    """`value (n runs), ...`, most frequent first."""
    return ", ".join(f"{value} ({n} runs)" for value, n in Counter(values).most_common())


def figures_png(src, found: list[Attempt], entries: list[Entry], per_class: dict | None) -> dict[str, bytes]:
    """File name -> PNG: best metric vs cycle, leaderboard bars, and the best run's per-class accuracy."""
    done = [a for a in found if a.status == "FINISHED" and a.metric is not None]
    by_cycle = all(a.cycle is not None for a in done)
    points = [(a.cycle if by_cycle else i, a.metric) for i, a in enumerate(done, 1)]
    x_label = "cycle" if by_cycle else "training run (start order)"
    out = {
        "final_fig_best_vs_cycle.png": figures.best_vs_cycle(points, src.direction, src.metric, x_label),
        "final_fig_leaderboard.png": figures.leaderboard_bars(entries),
    }
    if per_class is not None:
        out["final_fig_per_class.png"] = figures.per_class(per_class, entries[0].run_label)
    return out


def limitations(values: dict, per_class_missing: bool) -> list[str]:
    """What the numbers cannot show, judged from them."""
    entries, top = values["entries"], values["top"]
    if values["heldout"] is None:
        out = [
            "All figures are validation results on one fixed split; the record holds no held-out test set."
        ]
    else:
        out = ["Validation figures come from one fixed split; the test column was scored once, for top runs."]
    if values["split_note"]:
        out.append(values["split_note"])
    if few := [e for e in entries if e.n < 3]:
        out.append(
            f"{len(few)} of the top {len(entries)} configurations have fewer than 3 seed runs: "
            "their gains cannot be told from seed noise."
        )
    if len(entries) > 1 and top.std is not None and abs(top.mean - entries[1].mean) <= top.std:
        out.append("The runner-up's mean lies within one standard deviation of the best one's.")
    out.append(f"Trainings ran these epochs: {values['epochs']}; a longer budget may change the order.")
    llms = ", ".join(values["llms"]) or "unknown"
    out.append(f"The choices come from the loop's LLM backend ({llms}), not from a systematic search.")
    if per_class_missing:
        out.append(f"The best run has no {PER_CLASS} artifact, so there is no per-class figure.")
    return out
