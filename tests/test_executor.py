"""The executor with real subprocesses: small fake trainers for the edge cases, the real trainer once."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from conftest import TINY

from agentexp import tracking
from agentexp.executor import Executor, ExecutorConfig, ExecutorError
from agentexp.workspace import ActiveRun, Workspace

FAKE_TRAINER = """
import json, os, signal, subprocess, sys, time

args = dict(a.split("=", 1) for a in sys.argv[1:])
mode = args.get("mode", "finish")
names = ["MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "AGENTEXP_PARENT_RUN_ID",
         "AGENTEXP_CYCLE_TRACE_ID", "PYTHONUNBUFFERED"]
print("argv " + json.dumps(sys.argv[1:]))
print("env " + json.dumps({n: os.environ.get(n) for n in names}))
summary = "agentexp-summary: " + json.dumps({"best": 0.875, "run_id": "mlflow-run-1", "metric": "val_acc"})
if mode == "finish":
    print(summary)
elif mode == "fail":
    for i in range(100):
        print(f"progress line {i}")
    raise RuntimeError("fake crash in the data loader")
elif mode == "sleep":
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # same process group
    print("sleeping", flush=True)
    time.sleep(60)
elif mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("ignoring SIGTERM", flush=True)
    time.sleep(60)
elif mode == "wait":
    while not os.path.exists(args["go"]):
        time.sleep(0.02)
    print(summary)
elif mode == "timeout":
    print("Stopped: timeout after 1s (trainer.timeout_s); the run ended KILLED", file=sys.stderr)
    sys.exit(124)
"""


@pytest.fixture(autouse=True)
def fake_trainer(tmp_path, monkeypatch):
    """`python -m fake_trainer` importable by the children."""
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    (fakes / "fake_trainer.py").write_text(textwrap.dedent(FAKE_TRAINER))
    monkeypatch.setenv("PYTHONPATH", str(fakes), prepend=os.pathsep)


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / ".llm_loop").create()


def executor(ws: Workspace, store, **cfg) -> Executor:
    settings = {"trainer_module": "fake_trainer", "poll_interval_s": 0.05, "stop_grace_s": 5.0} | cfg
    return Executor(ws, ExecutorConfig(**settings), store.uri, "test")


def wait_for(predicate, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {seconds}s")


def finish(ex: Executor, run: ActiveRun):
    return wait_for(lambda: ex.poll(run))


def group_members(pgid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def logged(run: ActiveRun, prefix: str) -> list | dict:
    line = next(x for x in run.log_path.read_text().splitlines() if x.startswith(prefix + " "))
    return json.loads(line.removeprefix(prefix + " "))


def test_launch_logs_output_passes_env_and_finishes(ws, store, monkeypatch):
    monkeypatch.setenv(tracking.ENV_PARENT, "not-this-runs-parent")
    ex = executor(ws, store)
    run = ex.launch("lr-3e-4", ["mode=finish", "optim.lr=0.0003"], 3, "trace-3", "parent-9")
    assert run.log_path == ws.logs / "lr-3e-4.log"
    assert (run.cycle, run.cycle_trace_id, run.overrides) == (
        3,
        "trace-3",
        ["mode=finish", "optim.lr=0.0003"],
    )
    outcome = finish(ex, run)
    assert outcome.status == "finished"
    assert (outcome.returncode, outcome.metric, outcome.mlflow_run_id) == (0, 0.875, "mlflow-run-1")
    assert outcome.summary["metric"] == "val_acc" and outcome.error_tail == ""
    assert logged(run, "env") == {
        "MLFLOW_TRACKING_URI": store.uri,
        "MLFLOW_EXPERIMENT_NAME": "test",
        "AGENTEXP_PARENT_RUN_ID": "parent-9",
        "AGENTEXP_CYCLE_TRACE_ID": "trace-3",
        "PYTHONUNBUFFERED": "1",
    }
    run_dir = ws.root.resolve() / "runs" / "lr-3e-4-trace-3"
    assert logged(run, "argv") == [
        "mode=finish",
        "optim.lr=0.0003",
        "run_label='lr-3e-4'",
        f"hydra.run.dir='{run_dir}'",
    ]


def test_no_parent_means_none_in_the_env(ws, store, monkeypatch):
    monkeypatch.setenv(tracking.ENV_PARENT, "the-loops-own-parent")
    ex = executor(ws, store)
    run = ex.launch("orphan", ["mode=finish"], 1, "t1", None)
    finish(ex, run)
    assert logged(run, "env")["AGENTEXP_PARENT_RUN_ID"] is None


def test_failing_trainer_is_failed_with_the_log_tail(ws, store):
    ex = executor(ws, store)
    run = ex.launch("crashy", ["mode=fail"], 1, "t1", None)
    outcome = finish(ex, run)
    assert (outcome.status, outcome.returncode, outcome.metric, outcome.summary) == ("failed", 1, None, None)
    lines = outcome.error_tail.splitlines()
    assert len(lines) <= 40
    assert lines[-1] == "RuntimeError: fake crash in the data loader"
    assert "progress line 99" in outcome.error_tail and "progress line 0\n" not in outcome.error_tail


def test_a_reused_label_is_judged_on_its_own_launch(ws, store):
    ex = executor(ws, store)
    finish(ex, ex.launch("again", ["mode=finish"], 1, "t1", None))
    outcome = finish(ex, ex.launch("again", ["mode=fail"], 2, "t2", None))
    assert outcome.status == "failed"  # the first launch's summary line does not count
    assert "agentexp-summary" not in outcome.error_tail


def test_terminate_stops_the_whole_process_group(ws, store):
    ex = executor(ws, store)
    run = ex.launch("long", ["mode=sleep"], 1, "t1", None)
    wait_for(lambda: "sleeping" in run.log_path.read_text())
    assert len(group_members(run.pid)) == 2  # the trainer and its own child
    assert not ex.has_capacity([run])
    started = time.monotonic()
    outcome = ex.terminate(run)
    assert time.monotonic() - started < 3
    assert (outcome.status, outcome.returncode) == ("killed", -signal.SIGTERM)
    assert "sleeping" in outcome.error_tail
    assert group_members(run.pid) == []
    assert ex.has_capacity([run])
    assert ex.poll(run) == outcome


def test_terminate_kills_a_trainer_ignoring_sigterm_after_the_grace(ws, store):
    ex = executor(ws, store, stop_grace_s=0.5)
    run = ex.launch("stubborn", ["mode=stubborn"], 1, "t1", None)
    wait_for(lambda: "ignoring SIGTERM" in run.log_path.read_text())
    started = time.monotonic()
    outcome = ex.terminate(run)
    assert 0.5 <= time.monotonic() - started < 3
    assert (outcome.status, outcome.returncode) == ("killed", -signal.SIGKILL)


def test_terminate_after_the_end_keeps_the_outcome(ws, store):
    ex = executor(ws, store)
    run = ex.launch("quick", ["mode=finish"], 1, "t1", None)
    wait_for(lambda: not Executor.alive(run.pid))  # exited, not yet polled
    assert ex.terminate(run).status == "finished"


def test_a_restarted_loop_polls_a_run_by_pid(ws, store, tmp_path):
    go = tmp_path / "go"
    first = executor(ws, store)
    run = first.launch("resumed", ["mode=wait", f"go={go}"], 1, "t1", None)
    saved = ActiveRun.model_validate_json(run.model_dump_json())  # as read back from state.json
    second = executor(ws, store)
    assert second.poll(saved) is None
    assert not second.has_capacity([saved])
    go.touch()
    outcome = finish(second, saved)
    assert (outcome.status, outcome.returncode, outcome.metric) == ("finished", None, 0.875)
    assert first.poll(run).returncode == 0  # the old process's child is reaped: no zombie stays


def test_a_run_stopped_by_its_timeout_while_unwatched_is_killed(ws, store):
    first = executor(ws, store)
    run = first.launch("slowpoke", ["mode=timeout"], 1, "t1", None)
    wait_for(lambda: first.poll(run))
    outcome = executor(ws, store).poll(run)  # a new loop, which never saw the exit code
    assert (outcome.status, outcome.returncode) == ("killed", None)
    assert "the run ended KILLED" in outcome.error_tail


def test_a_reused_pid_is_not_mistaken_for_the_run(ws, store):
    me = psutil.Process()
    ghost = ActiveRun(
        pid=me.pid,  # alive, but started an hour after the recorded run
        run_label="ghost",
        log_path=ws.log_path("ghost"),
        cycle=1,
        cycle_trace_id="t1",
        started_at=me.create_time() - 3600,
        monitor_until=0.0,
    )
    outcome = executor(ws, store).poll(ghost)
    assert (outcome.status, outcome.returncode, outcome.error_tail) == ("failed", None, "")


def test_monitor_returns_when_every_run_ended_and_beats(ws, store):
    ex = executor(ws, store)
    runs = [ex.launch(label, ["mode=finish"], 1, "t1", None) for label in ("one", "two")]
    beats = []
    started = time.monotonic()
    outcomes = ex.monitor(runs, 60, lambda: beats.append(1), lambda: False)
    assert time.monotonic() - started < 10
    assert sorted(o.run_label for o in outcomes) == ["one", "two"]
    assert {o.status for o in outcomes} == {"finished"}
    assert beats


def test_monitor_honours_should_stop(ws, store):
    ex = executor(ws, store)
    run = ex.launch("long", ["mode=sleep"], 1, "t1", None)
    beats, asked = [], []
    started = time.monotonic()
    outcomes = ex.monitor([run], 60, lambda: beats.append(1), lambda: asked.append(1) or len(asked) >= 3)
    assert outcomes == [] and len(beats) == 3
    assert time.monotonic() - started < 2
    assert ex.poll(run) is None
    ex.terminate(run)


def test_monitor_seconds_are_clamped(ws, store):
    ex = executor(ws, store, monitor_seconds_max=1)
    run = ex.launch("long", ["mode=sleep"], 1, "t1", None)
    started = time.monotonic()
    assert ex.monitor([run], 10_000, lambda: None, lambda: False) == []
    assert 1 <= time.monotonic() - started < 3
    beats = []
    assert ex.monitor([run], -5, lambda: beats.append(1), lambda: False) == []
    assert beats == [1]  # zero seconds: one look, one heartbeat
    ex.terminate(run)


@pytest.mark.parametrize(
    ("requested", "active", "expected"),
    [(0, True, 20.0), (0, False, 0.0), (45, True, 45.0), (9999, False, 600.0)],
)
def test_monitor_window(ws, store, requested, active, expected):
    assert executor(ws, store).monitor_window(requested, active) == expected


def test_launch_with_a_missing_interpreter_is_one_clear_error(ws, store, tmp_path):
    ex = executor(ws, store, python_exe=str(tmp_path / "no-python"))
    with pytest.raises(ExecutorError, match="could not start the trainer"):
        ex.launch("nope", [], 1, "t1", None)


def test_real_trainer_run_is_nested_under_its_parent(ws, store):
    experiment_id = tracking.ensure_store(store.uri, "test")
    parent = store.client.create_run(experiment_id, tags={tracking.KIND: "decision"})
    ex = Executor(ws, ExecutorConfig(poll_interval_s=0.2), store.uri, "test")
    run = ex.launch("tiny-real", [*TINY, "trainer.epochs=1"], 1, "trace-real", parent.info.run_id)
    outcomes = ex.monitor([run], 300, lambda: None, lambda: False)
    store.client.set_terminated(parent.info.run_id)
    assert len(outcomes) == 1, run.log_path.read_text()[-3000:]
    outcome = outcomes[0]
    assert outcome.status == "finished", outcome.error_tail
    trained = store.client.get_run(outcome.mlflow_run_id)
    assert trained.info.status == "FINISHED"
    assert trained.info.run_name == "tiny-real"
    assert trained.data.tags[tracking.PARENT_RUN_ID] == parent.info.run_id
    assert trained.data.tags[tracking.CYCLE_TRACE_ID] == "trace-real"
    assert trained.data.tags[tracking.RUN_DIR] == str(ws.root.resolve() / "runs" / "tiny-real-trace-real")
    assert outcome.metric == pytest.approx(trained.data.metrics["best_val_acc"])
    assert Path(trained.data.tags[tracking.RUN_DIR]).is_dir()
