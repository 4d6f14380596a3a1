"""The final leaderboard: finished training runs grouped over seeds and ranked in the metric's direction."""

from __future__ import annotations

import functools
import json
import math
import statistics

from pydantic import BaseModel

from agentexp import tracking

NOT_CONFIG = ("run_label", "trainer.seed")
"""Override keys that never tell two configurations apart (with hydra.*)."""
WALL_TIME = "wall_time_s"
KEY_TAGS = (tracking.OVERRIDES, tracking.CODE_COMMIT, tracking.DATA_SPLIT)
"""The tags that say which configuration a run is and which validation split scored it (what a ranking
query must read)."""


class Entry(BaseModel):
    """One leaderboard row: a configuration, its seed runs aggregated."""

    rank: int
    run_id: str
    """The best seed's run."""
    run_label: str
    metric: str
    """The summary metric, e.g. best_val_acc."""
    mean: float
    std: float | None
    """Sample standard deviation over the seed runs; None for a single run."""
    n: int
    best: float
    """The best seed's value (the run_id's metric)."""
    seed_run_ids: list[str]
    """Every run aggregated into the row, oldest first."""
    seeds: list[str]
    overrides: list[str]
    """The configuration: the run's overrides without run_label, trainer.seed and hydra.*."""
    key_overrides: list[str]
    """The configuration without the overrides every ranked configuration shares."""
    model: str | None
    epochs: int | None
    wall_time_s: float | None
    """The best seed run's wall time."""
    git_commit: str | None
    code_commit: str | None = None
    """The code experiment's commit the runs trained (agentexp.code.commit); None: the checkout's code."""
    cycle: int | None
    """The cycle that proposed the configuration (its first run's)."""
    command: str | None
    """The exact command that reruns the best seed run."""
    start_time: int
    """Start of the configuration's first run (ms): ties go to the earlier one."""

    def metric_text(self) -> str:
        """The metric as shown: `mean ± std (n)` where seeds exist, else the value."""
        if self.n > 1:
            return f"{self.mean:.4f} ± {self.std:.4f} ({self.n})"
        return f"{self.mean:.4f}"


def overrides_of(row: dict) -> list[str]:
    """A training row's recorded overrides (an unreadable tag counts as none)."""
    return list(_parsed_overrides(row["tags"].get(tracking.OVERRIDES, "[]")))


@functools.lru_cache(maxsize=20_000)
def _parsed_overrides(tag: str) -> tuple[str, ...]:
    """Each tag parsed once: a leaderboard is recomputed after every training, over every run."""
    try:
        found = json.loads(tag)
    except ValueError:
        return ()
    return tuple(str(o) for o in found) if isinstance(found, list) else ()


def config_of(overrides: list[str]) -> list[str]:
    """The overrides that define a configuration (run label, seed and hydra.* left out)."""
    keep = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key not in NOT_CONFIG and not key.startswith("hydra."):
            keep.append(item)
    return keep


def config_key(row: dict) -> tuple[str, ...]:
    """What makes two runs one configuration: their overrides (seed and label aside) and the code they ran."""
    key = tuple(sorted(config_of(overrides_of(row))))
    code = row["tags"].get(tracking.CODE_COMMIT)
    return (*key, f"code={code[:12]}") if code else key


def finished(rows: list[dict], metric: str) -> list[dict]:
    """FINISHED runs with a finite summary metric; failed, killed and running ones are left out."""
    return [
        r for r in rows if r["status"] == "FINISHED" and math.isfinite(r["metrics"].get(metric, math.nan))
    ]


def choose_split(rows: list[dict], metric: str) -> str | None:
    """The validation split of the newest finished run, which the leaderboard compares on (None: untagged)."""
    done = finished(rows, metric)
    newest = max(done, key=lambda r: (r["start_time"] or 0, r["run_id"]), default=None)
    return None if newest is None else newest["tags"].get(tracking.DATA_SPLIT)


def same_split(rows: list[dict], metric: str) -> tuple[list[dict], int]:
    """The finished runs on the chosen split, and how many finished runs were on another one."""
    done = finished(rows, metric)
    split = choose_split(done, metric)
    kept = [r for r in done if r["tags"].get(tracking.DATA_SPLIT) == split]
    return kept, len(done) - len(kept)


def split_note(rows: list[dict], metric: str) -> str:
    """One sentence when finished runs on another validation split were left out of the ranking, else ''."""
    _, others = same_split(rows, metric)
    if not others:
        return ""
    split = choose_split(rows, metric) or "untagged"
    runs = "run was" if others == 1 else "runs were"
    return (
        f"{others} finished {runs} scored on another validation split and left out: only runs on the "
        f"newest finished run's split ({split}) are compared."
    )


def better(direction: str):
    """A sort key for one value: the better value sorts first."""
    return (lambda v: -v) if direction == "maximize" else (lambda v: v)


def order(rows: list[dict], metric: str, direction: str) -> tuple[list[list[dict]], set[str]]:
    """Configurations best first by mean metric, ties to the one that started first; each a list of its
    finished runs (oldest first), only those on the chosen validation split. Also the overrides every
    configuration shares."""
    groups: dict[tuple[str, ...], list[dict]] = {}
    for row in sorted(same_split(rows, metric)[0], key=lambda r: (r["start_time"] or 0, r["run_id"])):
        groups.setdefault(config_key(row), []).append(row)
    common = set.intersection(*(set(g) for g in groups)) if len(groups) > 1 else set()
    key = better(direction)
    ordered = sorted(
        groups.values(),
        key=lambda runs: (
            key(statistics.fmean(r["metrics"][metric] for r in runs)),
            runs[0]["start_time"] or 0,
        ),
    )
    return ordered, common


def entries(groups: list[list[dict]], metric: str, direction: str, common: set[str]) -> list[Entry]:
    """Leaderboard rows of ordered configurations (rank 1 first)."""
    return [_entry(runs, metric, direction, common, number) for number, runs in enumerate(groups, 1)]


class Board(BaseModel):
    """A ranking and what it left out."""

    entries: list[Entry]
    note: str = ""
    """One sentence when finished runs on another validation split were left out, else ''."""


def rank(rows: list[dict], metric: str, direction: str = "maximize", k: int | None = None) -> list[Entry]:
    """The top k configurations by mean metric on the chosen split; ties go to the one that started first."""
    ordered, common = order(rows, metric, direction)
    return entries(ordered[:k] if k is not None else ordered, metric, direction, common)


def common_overrides(entries: list[Entry]) -> list[str]:
    """Overrides every ranked configuration shares (shown once above the table)."""
    if not entries:
        return []
    return [o for o in entries[0].overrides if o not in entries[0].key_overrides]


def _entry(runs: list[dict], metric: str, direction: str, common: set[str], number: int) -> Entry:
    values = [r["metrics"][metric] for r in runs]
    key = better(direction)
    best = min(runs, key=lambda r: (key(r["metrics"][metric]), r["start_time"] or 0))
    first, params, tags = runs[0], best["params"], best["tags"]
    overrides = config_of(overrides_of(best))
    epochs = params.get("trainer.epochs")
    return Entry(
        rank=number,
        run_id=best["run_id"],
        run_label=best["run_name"],
        metric=metric,
        mean=statistics.fmean(values),
        std=statistics.stdev(values) if len(values) > 1 else None,
        n=len(values),
        best=best["metrics"][metric],
        seed_run_ids=[r["run_id"] for r in runs],
        seeds=[r["tags"].get(tracking.SEED, "") for r in runs],
        overrides=overrides,
        key_overrides=[o for o in overrides if o not in common],
        model=params.get("model.name"),
        epochs=int(epochs) if epochs and epochs.isdigit() else None,
        wall_time_s=best["metrics"].get(WALL_TIME),
        git_commit=tags.get(tracking.GIT_COMMIT),
        code_commit=tags.get(tracking.CODE_COMMIT),
        cycle=tracking.cycle_of(first["tags"].get(tracking.CYCLE_TRACE_ID)),
        command=tags.get(tracking.COMMAND),
        start_time=first["start_time"] or 0,
    )


COLUMNS = (
    "rank",
    "run_id",
    "run label",
    "metric",
    "key overrides",
    "model",
    "epochs",
    "wall time (s)",
    "git commit",
    "code",
    "cycle",
    "seed runs",
)


def markdown_table(entries: list[Entry]) -> str:
    """The leaderboard as a Markdown table (what `agentexp leaderboard` prints)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for e in entries:
        cells = [
            str(e.rank),
            f"`{e.run_id}`",
            e.run_label,
            e.metric_text(),
            " ".join(f"`{o}`" for o in e.key_overrides) or "-",
            e.model or "-",
            str(e.epochs) if e.epochs is not None else "-",
            f"{e.wall_time_s:.1f}" if e.wall_time_s is not None else "-",
            (e.git_commit or "-")[:12],
            f"code={e.code_commit[:12]}" if e.code_commit else "-",
            str(e.cycle) if e.cycle is not None else "-",
            ", ".join(f"`{r}`" for r in e.seed_run_ids) if e.n > 1 else "-",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
