"""Final leaderboard, condensed story and paper-style report of one experiment, from MLflow queries alone."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from agentexp import paper, ranking, story, tracking
from agentexp.files import atomic_write_text
from agentexp.ranking import Entry
from agentexp.tracking import Source
from agentexp.workspace import Workspace

TEMPLATES = Path(__file__).parent / "report_templates"
ARTIFACT_PATH = "report"
"""Where the files go on the newest loop run."""
TRAIN_PARAMS = ("model.name", "trainer.epochs", "data.kind", "data.image_size")
TRAIN_TAGS = (
    *ranking.KEY_TAGS,
    tracking.CYCLE_TRACE_ID,
    tracking.PARENT_RUN_ID,
    tracking.SEED,
    tracking.GIT_COMMIT,
    tracking.CODE_BRANCH,
    tracking.CODE_OUTCOME,
    tracking.COMMAND,
    tracking.DEVICE,
    tracking.GPU_NAME,
)


class ReportError(Exception):
    """Nothing to report (no store, no experiment, no finished training), said in one sentence."""


def _experiment_id(src: Source) -> str:
    found = tracking.find_experiment(src.uri, src.experiment)
    if found is None:
        raise ReportError(f"no experiment {src.experiment!r} in the store {src.uri}: nothing to report")
    return found


def _train(src: Source, experiment_id: str, run_ids: list[str] | None = None) -> list[dict]:
    metrics = (src.metric, ranking.WALL_TIME, tracking.test_metric(src.metric))
    return tracking.run_table(src.uri, experiment_id, "train", metrics, TRAIN_PARAMS, TRAIN_TAGS, run_ids)


def _ranked(src: Source, train: list[dict], k: int | None) -> list[Entry]:
    entries = ranking.rank(train, src.metric, src.direction, k)
    if not entries:
        raise _nothing(src, len(train))
    return entries


def _nothing(src: Source, runs: int) -> ReportError:
    return ReportError(
        f"no finished training run with {src.metric} in experiment {src.experiment!r} "
        f"({runs} training runs in {src.uri}): nothing to report"
    )


def board(src: Source, k: int) -> ranking.Board:
    """The top k configurations: rank on the metric and overrides of every training run, then read the
    rest of the record for the chosen runs only."""
    experiment_id = _experiment_id(src)
    light = tracking.run_table(src.uri, experiment_id, "train", (src.metric,), (), ranking.KEY_TAGS)
    ordered, common = ranking.order(light, src.metric, src.direction)
    if not ordered:
        raise _nothing(src, len(light))
    chosen = ordered[:k]
    full = {r["run_id"]: r for r in _train(src, experiment_id, [r["run_id"] for g in chosen for r in g])}
    groups = [[full.get(r["run_id"], r) for r in runs] for runs in chosen]
    entries = ranking.entries(groups, src.metric, src.direction, common)
    return ranking.Board(entries=entries, note=ranking.split_note(light, src.metric))


def leaderboard(src: Source, k: int) -> list[Entry]:
    """The top k configurations (see board)."""
    return board(src, k).entries


def write_report(src: Source, k: int, ws: Workspace) -> list[Path]:
    """Write the final_* files to the workspace's artifacts/, and log them on the newest loop run."""
    experiment_id = _experiment_id(src)
    train = _train(src, experiment_id)
    entries = _ranked(src, train, k)
    decisions = tracking.run_table(
        src.uri,
        experiment_id,
        "decision",
        ("llm_calls", "cost_usd"),
        ("action", "strategy_dimension", "run_label"),
        (tracking.CYCLE_TRACE_ID,),
    )
    loops = tracking.run_table(src.uri, experiment_id, "loop", params=("llm",))
    ws.create()
    found = story.attempts(train, decisions, ws.events(), src.metric, src.direction)
    values = paper.facts(src, k, train, entries, found, decisions, loops)
    per_class = tracking.read_json_artifact(src.uri, entries[0].run_id, paper.PER_CLASS)
    pngs = paper.figures_png(src, found, entries, per_class)
    values["limits"] = paper.limitations(values, per_class is None)
    values["code_changes"] = code_changes(src, train)
    files = {name: ws.artifacts / name for name in pngs}
    for name, data in pngs.items():
        files[name].write_bytes(data)
    images = {name: base64.b64encode(data).decode("ascii") for name, data in pngs.items()}
    texts = {
        f"final_leaderboard_top{k}.json": json.dumps([e.model_dump(mode="json") for e in entries], indent=2),
        f"final_leaderboard_top{k}.md": render("leaderboard.md.j2", **values),
        "final_condensed_story.md": render("story.md.j2", **values),
        "final_paper_report.md": render("paper.md.j2", **values, figures=list(pngs)),
        "final_paper_report.html": render("paper.html.j2", **values, images=images),
    }
    for name, text in texts.items():
        files[name] = ws.artifacts / name
        atomic_write_text(files[name], text)
    if (loop_run := tracking.newest_run(src.uri, experiment_id, "loop")) is not None:
        tracking.log_files(src.uri, loop_run, list(files.values()), ARTIFACT_PATH)
    return list(files.values())


def code_changes(src: Source, train: list[dict]) -> list[story.CodeChange]:
    """The kept code experiments, each with the diff its decision run logged."""
    changes = story.kept_code(train, src.metric, src.direction)
    for change in changes:
        if change.decision_run_id:
            found = tracking.read_text_artifact(src.uri, change.decision_run_id, story.PATCH_ARTIFACT)
            change.diff = found or ""
    return changes


def render(template: str, **values) -> str:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        autoescape=template.endswith(".html.j2"),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["f4"] = lambda v: "-" if v is None else f"{v:.4f}"
    env.filters["code"] = lambda v: "`" + str(v).replace("`", "'") + "`"
    return env.get_template(template).render(**values)
