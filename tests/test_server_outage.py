"""The tracking server going away mid-loop: the cycle waits for it with backoff, nothing is lost, no
traceback (a real `mlflow server` on sqlite on loopback, stopped and started again)."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from helpers import decision, scripted_loop, wait_for
from mlflow.tracking import MlflowClient
from pg_fixtures import clean_env, free_port


def serve(db, port: int, folder) -> subprocess.Popen:
    """`mlflow server` over the test's sqlite store, once /health answers."""
    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{db}"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    argv += ["--artifacts-destination", str(folder / "artifacts")]
    env = clean_env() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with (folder / f"server-{time.monotonic_ns()}.log").open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def healthy() -> bool:
        with contextlib.suppress(OSError):
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200
        return False

    wait_for(healthy, 120, "the tracking server", proc)
    return proc


def paths(client: MlflowClient, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(30)


@pytest.mark.slow
def test_the_loop_waits_out_a_server_outage_and_loses_nothing(tmp_path, store, monkeypatch, caplog, capfd):
    port = free_port()
    server = serve(store.root / "mlflow.db", port, tmp_path)
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow gives up at once; the loop waits
        cycles = 6
        loop = scripted_loop(tmp_path, [decision("analyze")] * cycles, f"loop.max_cycles={cycles}")
        caplog.set_level(logging.WARNING, logger="agentexp")
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        wait_for(lambda: len(store.runs("decision")) >= 2, 60, "two cycles recorded")
        stop(server)
        time.sleep(3)  # the loop meets a dead server here
        server = serve(store.root / "mlflow.db", port, tmp_path)
        thread.join(120)
        assert not thread.is_alive()
        texts = MlflowClient(f"http://127.0.0.1:{port}")  # artifacts go through the server
        decisions = store.runs("decision")
        assert all({"decision.json", "prompt.md"} <= paths(texts, d.info.run_id) for d in decisions)
    finally:
        stop(server)
    decisions = store.runs("decision")
    assert [d.data.tags["agentexp.cycle"] for d in decisions] == [str(n) for n in range(1, cycles + 1)]
    assert all(d.info.status == "FINISHED" for d in decisions)
    (loop_run,) = store.runs("loop")
    assert loop_run.info.status == "FINISHED"
    waits = [r.getMessage() for r in caplog.records if "tracking server" in r.getMessage()]
    assert any("unreachable" in m for m in waits) and any("back after" in m for m in waits)
    assert all(r.exc_info is None for r in caplog.records if r.name.startswith("agentexp"))
    assert "Traceback" not in capfd.readouterr().err
