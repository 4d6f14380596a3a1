"""The MLflow store: creating it, and the read-only queries of reports, audits and resets."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from filelock import FileLock
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from agentexp.redact import redact_data
from agentexp.tracking.names import KIND, MAX_TAG, sqlite_path


def prepare_store(uri: str) -> MlflowClient:
    """A client on the store, created and migrated first where it is new; return the client.

    MLflow migrates a new sqlite file on first use, and two processes doing so at once break it for good
    (`_alembic_tmp_... already exists`): the first holds `<db>.lock` while it migrates, the others wait and
    then find the schema current. MLflow keeps one store per URI and process, so later clients reuse it.
    """
    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(uri)
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock"):
        return MlflowClient(uri)  # builds the store: creates the tables and runs the migrations


def ensure_store(uri: str, experiment: str) -> str:
    """Prepare the store and create the experiment; return its id.

    Artifacts of a sqlite store live beside the database, never relative to the working dir.
    """
    client = prepare_store(uri)
    db = sqlite_path(uri)
    artifact_location = (db.parent / "artifacts" / experiment).as_uri() if db is not None else None
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(experiment, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(experiment).experiment_id


def experiments(uri: str) -> dict[str, str]:
    """Name -> id of the store's experiments that hold runs (the empty Default one is left out)."""
    client = MlflowClient(uri)
    found = client.search_experiments()
    return {e.name: e.experiment_id for e in found if client.search_runs([e.experiment_id], max_results=1)}


PAGE = 1000
"""Runs per search_runs page where a store offers no projected query."""


def find_experiment(uri: str, experiment: str) -> str | None:
    """The id of an existing experiment; None when the store or the experiment is not there."""
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        return None
    found = prepare_store(uri).get_experiment_by_name(experiment)  # the file may be new and unmigrated
    return found.experiment_id if found is not None else None


def run_table(
    uri: str,
    experiment_id: str,
    kind: str,
    metrics: tuple[str, ...] = (),
    params: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    run_ids: list[str] | None = None,
) -> list[dict]:
    """Every active run of one kind (or those of run_ids), oldest first: run_id, run_name, status,
    start_time, end_time and only the named metrics, params and tags.

    A SQL store is read with one projected query per table: search_runs builds every param and tag of
    every run (about 1.5 ms a run, 15 s at 10,000 runs). Other stores page through search_runs.
    """
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    client = MlflowClient(uri)
    store = client._tracking_client.store  # the store MLflow built (and caches) for this URI
    if isinstance(store, SqlAlchemyStore):
        rows = _sql_table(store, experiment_id, kind, metrics, params, tags, run_ids)
    else:
        rows = _search_table(client, experiment_id, kind, metrics, params, tags, run_ids)
    return sorted(rows, key=lambda row: (row["start_time"] or 0, row["run_id"]))


def _row(run_id: str, name: str | None, status: str, start: int | None, end: int | None) -> dict:
    base = {"run_id": run_id, "run_name": name or "", "status": status, "start_time": start}
    return base | {"end_time": end, "metrics": {}, "params": {}, "tags": {}}


def _sql_table(store, experiment_id, kind, metrics, params, tags, run_ids=None) -> list[dict]:
    """One query: the runs, outer-joined once per wanted key (each join an index lookup)."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlRun, SqlTag
    from sqlalchemy import and_, null, select
    from sqlalchemy.orm import aliased

    is_kind = aliased(SqlTag)
    query = (
        select(SqlRun.run_uuid, SqlRun.name, SqlRun.status, SqlRun.start_time, SqlRun.end_time)
        .join(is_kind, and_(is_kind.run_uuid == SqlRun.run_uuid, is_kind.key == KIND, is_kind.value == kind))
        .where(SqlRun.experiment_id == int(experiment_id), SqlRun.lifecycle_stage == "active")
    )
    if run_ids is not None:
        query = query.where(SqlRun.run_uuid.in_(run_ids))
    fields = [("metrics", k) for k in metrics] + [("params", k) for k in params] + [("tags", k) for k in tags]
    for field, key in fields:
        table = aliased({"metrics": SqlLatestMetric, "params": SqlParam, "tags": SqlTag}[field])
        query = query.outerjoin(table, and_(table.run_uuid == SqlRun.run_uuid, table.key == key))
        query = query.add_columns(table.value, table.is_nan if field == "metrics" else null())
    rows = []
    with store.ManagedSessionMaker() as session:
        for found in session.connection().execute(query):
            row = _row(*found[:5])
            for (field, key), value, is_nan in zip(fields, found[5::2], found[6::2], strict=True):
                if value is not None:
                    row[field][key] = math.nan if is_nan else value
            rows.append(row)
    return rows


def _search_table(client: MlflowClient, experiment_id, kind, metrics, params, tags, run_ids=None):
    query = f"tags.`{KIND}` = '{kind}'"
    if run_ids is not None:
        query += f" and attributes.run_id IN ({', '.join(repr(r) for r in run_ids) or repr('')})"
    rows, token = [], None
    while True:
        page = client.search_runs([experiment_id], query, max_results=PAGE, page_token=token)
        for run in page:
            info, data = run.info, run.data
            row = _row(info.run_id, info.run_name, info.status, info.start_time, info.end_time)
            for field, values, keys in (
                ("metrics", data.metrics, metrics),
                ("params", data.params, params),
                ("tags", data.tags, tags),
            ):
                row[field] = {k: values[k] for k in keys if k in values}
            rows.append(row)
        token = page.token
        if not token:
            return rows


def newest_run(uri: str, experiment_id: str, kind: str) -> str | None:
    """The id of the most recently started run of a kind, else None."""
    found = MlflowClient(uri).search_runs(
        [experiment_id], f"tags.`{KIND}` = '{kind}'", max_results=1, order_by=["attributes.start_time DESC"]
    )
    return found[0].info.run_id if found else None


def read_json_artifact(uri: str, run_id: str, path: str) -> dict | None:
    """A run's JSON artifact, or None when the run has none (or it is unreadable)."""
    text = read_text_artifact(uri, run_id, path)
    try:
        return json.loads(text) if text is not None else None
    except ValueError:
        return None


def log_files(uri: str, run_id: str, files: list[Path], artifact_path: str) -> None:
    """Attach files to a run as artifacts under artifact_path."""
    client = MlflowClient(uri)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path)


def get_run(uri: str, run_id: str) -> dict | None:
    """One active run as a plain record (run_id, run_name, status, experiment, tags, metrics), else None."""
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        return None
    client = prepare_store(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    if run.info.lifecycle_stage != "active":
        return None
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name or "",
        "status": run.info.status,
        "experiment": client.get_experiment(run.info.experiment_id).name,
        "tags": dict(run.data.tags),
        "metrics": dict(run.data.metrics),
    }


def read_text_artifact(uri: str, run_id: str, path: str) -> str | None:
    """A run's text artifact, or None when the run has none."""
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # a report's stderr shows no progress bars
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, quiet):
        try:
            local = MlflowClient(uri).download_artifacts(run_id, path, tmp)
            return Path(local).read_text(encoding="utf-8")
        except (MlflowException, OSError, UnicodeDecodeError):
            return None


def artifact_paths(uri: str, run_id: str, folder: str) -> set[str]:
    """Paths of the files directly inside one artifact folder of a run."""
    return {a.path for a in MlflowClient(uri).list_artifacts(run_id, folder) if not a.is_dir}


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Set (or overwrite) tags on a run in one batch (secrets redacted)."""
    tag_run(MlflowClient(uri), run_id, tags)


def tag_run(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    """set_tags through a given client."""
    tags = redact_data(tags)
    client.log_batch(run_id, tags=[RunTag(k, v[:MAX_TAG]) for k, v in tags.items()])


def find_run_by_tag(uri: str, experiment: str, key: str, value: str) -> str | None:
    """The id of the newest run of an experiment whose tag `key` equals `value`, else None."""
    experiment_id = find_experiment(uri, experiment)
    return None if experiment_id is None else run_by_tag(MlflowClient(uri), experiment_id, key, value)


def run_by_tag(client: MlflowClient, experiment_id: str, key: str, value: str) -> str | None:
    """find_run_by_tag through a given client, in a known experiment."""
    quote = '"' if "'" in value else "'"  # MLflow's filter has no escapes; either quote is allowed
    found = client.search_runs(
        [experiment_id],
        f"tags.`{key}` = {quote}{value}{quote}",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return found[0].info.run_id if found else None


def delete_experiment_runs(uri: str, experiment: str) -> tuple[int, int]:
    """Delete every run of one experiment and its traces (MLflow's delete: `mlflow gc` frees the space).

    Returns (runs, traces) deleted. Other experiments are untouched; the experiment itself stays, so the
    next loop logs into it again.
    """
    experiment_id = find_experiment(uri, experiment)
    if experiment_id is None:
        return 0, 0
    client, ids, token = MlflowClient(uri), [], None
    while True:
        page = client.search_runs([experiment_id], max_results=PAGE, page_token=token)
        ids += [run.info.run_id for run in page]
        token = page.token
        if not token:
            break
    for run_id in ids:
        client.delete_run(run_id)
    traces = client.delete_traces(experiment_id, max_timestamp_millis=int(time.time() * 1000) + 1)
    return len(ids), traces


@dataclass(frozen=True)
class Source:
    """Where the facts are and what counts as better."""

    uri: str
    experiment: str
    metric: str
    """The summary metric the runs are ranked by, e.g. best_val_acc."""
    direction: str = "maximize"


LOOP_METRIC, LOOP_DIRECTION = "metric", "direction"
"""Params of a loop run naming its mission's summary metric and direction."""


def locate(uri: str, experiment: str, metric: str, direction: str, mission_given: bool = False) -> Source:
    """The store and what counts as better in it: the experiment's newest loop run says which metric and
    direction its mission has; `metric` and `direction` (a mission's) stand when given explicitly or
    when no loop ran there."""
    experiment_id = None if mission_given else find_experiment(uri, experiment)
    loop = newest_run(uri, experiment_id, "loop") if experiment_id else None
    if loop is not None:
        params = MlflowClient(uri).get_run(loop).data.params
        metric, direction = params.get(LOOP_METRIC, metric), params.get(LOOP_DIRECTION, direction)
    return Source(uri=uri, experiment=experiment, metric=metric, direction=direction)
