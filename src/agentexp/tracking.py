"""MLflow conventions: where the store is, run kinds and tag names, store preparation."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

KIND = "agentexp.kind"
"""Run kind tag: loop, decision, train or audit."""
CYCLE_TRACE_ID = "agentexp.cycle_trace_id"
PARENT_RUN_ID = "mlflow.parentRunId"
OVERRIDES = "agentexp.overrides"
"""JSON list of the Hydra overrides a training ran with."""

COMMAND = "agentexp.command"
"""The command that reruns a training (overrides included)."""
RUN_DIR = "agentexp.run_dir"
PID = "agentexp.pid"
"""The training process; the reaper ends a RUNNING run whose process is gone."""
SEED = "agentexp.seed"
DATA_FINGERPRINT = "agentexp.data.fingerprint"
SKIPPED_IMAGES = "agentexp.data.skipped_images"
GIT_STATUS = "agentexp.git.status"
"""`ok`, or why no git state was recorded (e.g. an unpacked archive)."""
GIT_COMMIT = "agentexp.git.commit"
GIT_DIRTY = "agentexp.git.dirty"
GIT_DIFF_ARTIFACT = "agentexp.git.diff_artifact"
DEVICE = "agentexp.device"
GPU_NAME = "agentexp.gpu_name"
BEST_EPOCH = "agentexp.best_epoch"
VERSION_PREFIX = "agentexp.version."

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"
ENV_PARENT = "AGENTEXP_PARENT_RUN_ID"
ENV_TRACE = "AGENTEXP_CYCLE_TRACE_ID"


def resolve_uri(configured: str, cwd: Path | None = None) -> str:
    """The store URI: MLFLOW_TRACKING_URI wins; a relative sqlite path becomes absolute once, here."""
    uri = os.environ.get(ENV_URI) or configured
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = (cwd or Path.cwd()) / uri.removeprefix(prefix)
        uri = prefix + str(path.resolve())
    return uri


def resolve_experiment(configured: str) -> str:
    """The experiment name: MLFLOW_EXPERIMENT_NAME wins over the config."""
    return os.environ.get(ENV_EXPERIMENT) or configured


def sqlite_path(uri: str) -> Path | None:
    """The database file behind a sqlite URI, else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def ensure_store(uri: str, experiment: str) -> str:
    """Create the store (schema migrations run here, once) and the experiment; return its id.

    Artifacts of a sqlite store live beside the database, never relative to the working dir.
    """
    db = sqlite_path(uri)
    artifact_location = None
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        artifact_location = (db.parent / "artifacts" / experiment).as_uri()
    client = MlflowClient(uri)
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


def runs_page(experiment_id: str, port: int, host: str = "127.0.0.1") -> str:
    """The MLflow UI page that lists and compares an experiment's training runs."""
    return f"http://{host}:{port}/#/experiments/{experiment_id}/runs"


SESSION = "agentexp.session_id"
CYCLE = "agentexp.cycle"
MAX_QUERY = 5000
"""Training runs read for the agents' context (newest first); older ones only matter to reports."""
REFRESH_OVERLAP_MS = 10 * 60 * 1000
"""A refresh also re-reads runs started this long before the previous read (clocks of other machines)."""
UNFINISHED = ("RUNNING", "SCHEDULED")


def trace_id_for(cycle: int) -> str:
    """A cycle's trace id; the cycle number stays readable in it."""
    return f"c{cycle:05d}-{uuid.uuid4().hex[:8]}"


def cycle_of(trace_id: str | None) -> int | None:
    """The cycle number inside a trace id made by trace_id_for, else None."""
    if trace_id and trace_id.startswith("c") and trace_id[1:6].isdigit():
        return int(trace_id[1:6])
    return None


class Tracker:
    """The loop's MLflow record: one loop run per session, one decision run per cycle, training queries."""

    def __init__(self, uri: str, experiment: str):
        self.uri, self.experiment = uri, experiment
        mlflow.set_tracking_uri(uri)  # the trace exporter writes to the global store, not to a client's
        self.client = MlflowClient(uri)
        self.experiment_id = ensure_store(uri, experiment)
        self._train_runs: list[dict] | None = None
        self._known: dict[str, tuple[int, dict]] = {}  # run id -> (start time, row)
        self._read_at: int | None = None  # ms; None until the first full read

    def start_loop(self, session_id: str, params: dict[str, str], resume_run_id: str | None) -> str:
        """Resume this session's loop run after a restart, or open a new one."""
        tags = {KIND: "loop", SESSION: session_id, PID: str(os.getpid())}
        if resume_run_id is not None:
            self.client.update_run(resume_run_id, status="RUNNING")
            for key, value in tags.items():
                self.client.set_tag(resume_run_id, key, value)
            return resume_run_id
        run = self.client.create_run(self.experiment_id, run_name=f"loop-{session_id[:8]}", tags=tags)
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED", flush_traces: bool = True) -> None:
        """End a run; with flush_traces, traces still queued for export are written first.

        A flush takes up to a second (MLflow's export thread polls its queue once a second), so the loop
        flushes when its session ends, not after each decision run; the export thread writes them meanwhile.
        """
        if flush_traces:
            mlflow.flush_trace_async_logging()
        self.client.set_terminated(run_id, status)

    def start_decision(self, loop_run_id: str, cycle: int, trace_id: str) -> str:
        tags = {
            KIND: "decision",
            PARENT_RUN_ID: loop_run_id,
            CYCLE_TRACE_ID: trace_id,
            CYCLE: str(cycle),
            PID: str(os.getpid()),
        }
        run = self.client.create_run(self.experiment_id, run_name=f"cycle-{cycle:04d}", tags=tags)
        return run.info.run_id

    def finish_if_running(self, run_id: str) -> None:
        """End a run FINISHED unless it has ended already (a restart completing a committed cycle)."""
        try:
            running = self.client.get_run(run_id).info.status == "RUNNING"
        except MlflowException:  # not in this store (the store moved between sessions): nothing to end
            return
        if running:
            self.client.set_terminated(run_id, "FINISHED")

    def log_decision(
        self,
        run_id: str,
        params: dict[str, str],
        metrics: dict[str, float],
        tags: dict[str, str],
        texts: dict[str, str],
    ) -> None:
        """Log a decision run's record in one batch and its texts as artifacts; end_run ends it later."""
        self._log_params(run_id, params)
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, v[:MAX_TAG]) for k, v in tags.items()],
        )
        with tempfile.TemporaryDirectory(prefix="agentexp-texts-") as tmp:  # one upload, not one per text
            for path, text in texts.items():
                target = Path(tmp) / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
            self.client.log_artifacts(run_id, tmp)

    def log_calls(self, run_id: str, role: str, calls: list) -> None:
        """Each LLM call as an MLflow trace linked to its decision run (prompt in, raw answer out)."""
        for call in calls:
            end = time.time_ns()
            span = self.client.start_trace(
                f"{role}-llm-call",
                span_type="LLM",
                inputs={"prompt": call.prompt},
                experiment_id=self.experiment_id,
                run_id=run_id,
                start_time_ns=end - int(call.latency_s * 1e9),
            )
            usage = call.usage.model_dump()
            self.client.end_trace(
                span.trace_id,
                outputs={"raw": call.raw},
                attributes={**usage, "error": call.error or ""},
                status="ERROR" if call.error else "OK",
                end_time_ns=end,
            )

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        self.client.log_batch(run_id, params=[Param(k, str(v)[:MAX_PARAM]) for k, v in params.items()])

    def training_runs(self) -> list[dict]:
        """Every training run as the agents see it (newest last); cached until invalidate().

        The first call reads them all; later ones re-read only the runs that can have changed since the
        previous read (those started since, and those still running then), so a refresh after each
        training stays cheap at 5,000 runs. A run deleted meanwhile stays listed until the next session.
        """
        if self._train_runs is None:
            now = int(time.time() * 1000)
            if self._read_at is None:
                found = self._search_training("")
            else:
                running = [start for start, row in self._known.values() if row["status"] in UNFINISHED]
                since = min([self._read_at, *running]) - REFRESH_OVERLAP_MS
                found = self._search_training(f" and attributes.start_time >= {since}")
            self._known |= {run.info.run_id: (run.info.start_time or 0, _as_training(run)) for run in found}
            newest = sorted(self._known.items(), key=lambda item: item[1][0])[-MAX_QUERY:]
            self._known = dict(newest)
            self._train_runs = [row for _, (_, row) in newest]
            self._read_at = now
        return self._train_runs

    def _search_training(self, condition: str) -> list:
        return self.client.search_runs(
            [self.experiment_id],
            f"tags.`{KIND}` = 'train'{condition}",
            max_results=MAX_QUERY,
            order_by=["attributes.start_time DESC"],
        )

    def invalidate(self) -> None:
        """Mark the cached training runs stale: call when a training ends (the next read is incremental)."""
        self._train_runs = None

    def reap(self, alive: Callable[[int], bool]) -> list[str]:
        """End as KILLED every RUNNING run whose recorded process is gone (a hard kill leaves them so)."""
        reaped = []
        for run in self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'"):
            pid = run.data.tags.get(PID)
            if pid and pid.isdigit() and not alive(int(pid)):
                self.client.set_terminated(run.info.run_id, "KILLED")
                reaped.append(run.info.run_id)
        if reaped:
            self.invalidate()
        return reaped


MAX_PARAM = 6000
MAX_TAG = 8000


def _as_training(run) -> dict:
    summary = [v for k, v in run.data.metrics.items() if k.startswith("best_")]
    return {
        "run_id": run.info.run_id,
        "run_label": run.info.run_name,
        "status": run.info.status,
        "overrides": json.loads(run.data.tags.get(OVERRIDES, "[]")),
        "metric": summary[0] if summary else None,
        "cycle": cycle_of(run.data.tags.get(CYCLE_TRACE_ID)),
    }


# ---- report queries: read only; they never create a store, an experiment or a run ---------------

PAGE = 1000
"""Runs per search_runs page where a store offers no projected query."""


def find_experiment(uri: str, experiment: str) -> str | None:
    """The id of an existing experiment; None when the store or the experiment is not there."""
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        return None
    found = MlflowClient(uri).get_experiment_by_name(experiment)
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


# ---- reproduce, audit and reset: one run's record, its artifacts, tags, deleting a mission's runs -----

AUDIT_OF = "agentexp.audit.of"
"""On an audit run: the id of the training it reproduced."""
AUDIT_MATCH = "agentexp.audit.match"
"""On an audit run: `true` when metric, data fingerprint and config matched the original."""
ENV_RUN_KIND = "AGENTEXP_RUN_KIND"
"""The trainer tags its run with this kind (`train` when unset; `agentexp reproduce` sets `audit`)."""


def get_run(uri: str, run_id: str) -> dict | None:
    """One active run as a plain record (run_id, run_name, status, experiment, tags, metrics), else None."""
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        return None
    client = MlflowClient(uri)
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
    """Set (or overwrite) tags on a run in one batch."""
    MlflowClient(uri).log_batch(run_id, tags=[RunTag(k, v[:MAX_TAG]) for k, v in tags.items()])


def find_run_by_tag(uri: str, experiment: str, key: str, value: str) -> str | None:
    """The id of the newest run of an experiment whose tag `key` equals `value`, else None."""
    experiment_id = find_experiment(uri, experiment)
    if experiment_id is None:
        return None
    quote = '"' if "'" in value else "'"  # MLflow's filter has no escapes; either quote is allowed
    found = MlflowClient(uri).search_runs(
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
