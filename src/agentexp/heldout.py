"""Validation against the held-out test for the report: side by side, rank correlation, runs off the band."""

from __future__ import annotations

import statistics

from pydantic import BaseModel

from agentexp.ranking import Entry

BAND_STDS = 2.0
"""A test result farther than this many validation stds from the validation mean is flagged."""


class Row(BaseModel):
    """One top-k configuration: its validation mean ± std and its test mean over the scored seed runs."""

    rank: int
    run_label: str
    val_mean: float
    val_std: float | None
    n: int
    test_mean: float | None
    """Mean test_<metric> of the configuration's scored seed runs; None when none was scored."""
    test_n: int
    band: float | None
    """The validation noise band (one std): the configuration's own over its seeds, else the largest
    among configurations with two or more seed runs; None when no configuration has seeds."""
    outside: bool
    """The test mean lies outside val_mean ± BAND_STDS · band."""


class Comparison(BaseModel):
    metric: str
    """The validation summary metric, e.g. best_val_acc."""
    test_metric: str
    """The held-out metric, e.g. test_acc."""
    rows: list[Row]
    spearman: float | None
    """Spearman rank correlation of validation and test means over the scored configurations."""

    @property
    def scored(self) -> list[Row]:
        return [r for r in self.rows if r.test_mean is not None]


def compare(entries: list[Entry], train: list[dict], test_metric: str) -> Comparison | None:
    """The top-k entries beside their test results (from the training rows); None when nothing was scored."""
    tests = {r["run_id"]: r["metrics"][test_metric] for r in train if test_metric in r["metrics"]}
    if not any(run_id in tests for e in entries for run_id in e.seed_run_ids):
        return None
    seeded = [e.std for e in entries if e.n >= 2 and e.std is not None]
    widest = max(seeded, default=None)
    rows = []
    for e in entries:
        values = [tests[run_id] for run_id in e.seed_run_ids if run_id in tests]
        test = statistics.fmean(values) if values else None
        band = e.std if e.n >= 2 else widest
        outside = test is not None and band is not None and abs(test - e.mean) > BAND_STDS * band
        rows.append(
            Row(
                rank=e.rank,
                run_label=e.run_label,
                val_mean=e.mean,
                val_std=e.std,
                n=e.n,
                test_mean=test,
                test_n=len(values),
                band=band,
                outside=outside,
            )
        )
    scored = [r for r in rows if r.test_mean is not None]
    rho = spearman([r.val_mean for r in scored], [r.test_mean for r in scored])
    return Comparison(metric=entries[0].metric, test_metric=test_metric, rows=rows, spearman=rho)


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho (Pearson's r of the average ranks); None for fewer than 2 points or a constant side."""
    if len(x) < 2:
        return None
    try:
        return statistics.correlation(_ranks(x), _ranks(y))
    except statistics.StatisticsError:
        return None


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def markdown_table(found: Comparison) -> str:
    """Validation and test side by side, flagged rows marked."""
    lines = [
        f"| rank | run label | {found.metric} (mean ± std (n)) | {found.test_metric} (n) "
        "| noise band (2·std) | outside |",
        "|---|---|---|---|---|---|",
    ]
    for r in found.rows:
        val = f"{r.val_mean:.4f} ± {r.val_std:.4f} ({r.n})" if r.val_std is not None else f"{r.val_mean:.4f}"
        test = f"{r.test_mean:.4f} ({r.test_n})" if r.test_mean is not None else "-"
        band = f"± {BAND_STDS * r.band:.4f}" if r.band is not None else "-"
        cells = [str(r.rank), r.run_label, val, test, band, "**yes**" if r.outside else "no"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def summary(found: Comparison) -> str:
    """One sentence: the rank correlation and the flagged configurations."""
    rho = f"{found.spearman:.2f}" if found.spearman is not None else "not defined"
    flagged = [r.run_label for r in found.rows if r.outside]
    where = f"; outside the validation noise band: {', '.join(flagged)}" if flagged else ""
    return (
        f"Spearman rank correlation of validation and test over {len(found.scored)} scored configurations: "
        f"{rho}{where}."
    )
