"""The loop's MLflow record: one loop run per session, one decision run per cycle, the training runs."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from agentexp.redact import redact_data
from agentexp.tracking.names import (
    CODE_COMMIT,
    CYCLE,
    CYCLE_TRACE_ID,
    DATA_SPLIT,
    HOST,
    KIND,
    MAX_PARAM,
    MAX_TAG,
    OVERRIDES,
    PARENT_RUN_ID,
    PID,
    PRUNED,
    SEED,
    SESSION,
    SLURM_JOB,
)
from agentexp.tracking.patience import Patient
from agentexp.tracking.store import _row, ensure_store, run_by_tag, tag_run

MAX_QUERY = 5000
"""Training runs read for the agents' context (newest first); older ones only matter to reports."""
REFRESH_OVERLAP_MS = 10 * 60 * 1000
"""A refresh also re-reads runs started this long before the previous read (clocks of other machines)."""
UNFINISHED = ("RUNNING", "SCHEDULED")


class Tracker:
    """The loop's MLflow record: one loop run per session, one decision run per cycle, training queries."""

    def __init__(self, uri: str, experiment: str):
        self.uri, self.experiment = uri, experiment
        mlflow.set_tracking_uri(uri)  # the trace exporter writes to the global store, not to a client's
        self.client = Patient(MlflowClient(uri))  # the loop waits out a tracking server gone away
        self.experiment_id = ensure_store(uri, experiment)
        self._train_runs: list[dict] | None = None
        self._known: dict[str, tuple[int, dict]] = {}  # run id -> (start time, row)
        self._read_at: int | None = None  # ms; None until the first full read

    def start_loop(self, session_id: str, params: dict[str, str], resume_run_id: str | None) -> str:
        """Resume this session's loop run after a restart, or open a new one."""
        tags = {KIND: "loop", SESSION: session_id, PID: str(os.getpid()), HOST: socket.gethostname()}
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
            HOST: socket.gethostname(),
        }
        run = self.client.create_run(self.experiment_id, run_name=f"cycle-{cycle:04d}", tags=tags)
        return run.info.run_id

    def end_if_running(self, run_id: str, status: str = "FINISHED") -> None:
        """End a run unless it has ended already (a restart completing a committed cycle; a training whose
        process was killed before it could end its own run)."""
        try:
            running = self.client.get_run(run_id).info.status == "RUNNING"
        except MlflowException:  # not in this store (the store moved between sessions): nothing to end
            return
        if running:
            self.client.set_terminated(run_id, status)

    def log_decision(
        self,
        run_id: str,
        params: dict[str, str],
        metrics: dict[str, float],
        tags: dict[str, str],
        texts: dict[str, str],
    ) -> None:
        """Log a decision run's record in one batch and its texts as artifacts (secrets redacted from all of
        it); end_run ends it later."""
        params, tags, texts = redact_data(params), redact_data(tags), redact_data(texts)
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
        if calls:  # traces export in the background, where MLflow drops what fails: wait for the server here
            self.client.get_experiment(self.experiment_id)
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

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        """Set (or overwrite) tags on a run (secrets redacted)."""
        tag_run(self.client, run_id, tags)

    def run_by_tag(self, key: str, value: str) -> str | None:
        """The newest run of the loop's experiment whose tag `key` is `value`, else None."""
        return run_by_tag(self.client, self.experiment_id, key, value)

    def invalidate(self) -> None:
        """Mark the cached training runs stale: call when a training ends (the next read is incremental)."""
        self._train_runs = None

    def reap(self, alive: Callable[[int], bool], job_ended: Callable[[str], bool | None]) -> list[str]:
        """End as KILLED every RUNNING run whose process is gone (a hard kill leaves them so): a SLURM job's
        run once SLURM says the job ended, any other run only on its own host when its pid is gone. Runs of
        other hosts, with no host recorded, or of jobs nobody here can query, are never touched."""
        reaped, host = [], socket.gethostname()
        for run in self.client.search_runs([self.experiment_id], "attributes.status = 'RUNNING'"):
            tags = run.data.tags
            pid, where, job = tags.get(PID), tags.get(HOST), tags.get(SLURM_JOB)
            if job:
                gone = job_ended(job) is True
            else:
                gone = where == host and bool(pid) and pid.isdigit() and not alive(int(pid))
            if gone:
                self.client.set_terminated(run.info.run_id, "KILLED")
                reaped.append(run.info.run_id)
        if reaped:
            self.invalidate()
        return reaped


TRAINING_TAGS = (OVERRIDES, CODE_COMMIT, CYCLE_TRACE_ID, SEED, PARENT_RUN_ID, DATA_SPLIT, PRUNED)
"""The tags of a training run the loop reads (as tracking.run_table rows carry them)."""


def _as_training(run) -> dict:
    """A training run as a tracking.run_table row: its best_* metrics and the tags the loop reads."""
    info, data = run.info, run.data
    row = _row(info.run_id, info.run_name, info.status, info.start_time, info.end_time)
    row["metrics"] = {k: v for k, v in data.metrics.items() if k.startswith("best_")}
    row["tags"] = {k: data.tags[k] for k in TRAINING_TAGS if k in data.tags}
    return row
