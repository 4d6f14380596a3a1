"""A training's life with real subprocesses: small fake trainers for the edge cases, the real trainer once."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from helpers import TINY, wait_for
from mlflow.tracking import MlflowClient

from agentexp import tracking
from agentexp.events import Launch, Launched, RunEnd
from agentexp.launchers.base import ActiveRun, Handle
from agentexp.launchers.local import LocalLauncher, alive
from agentexp.pruning import PruneConfig, Pruner
from agentexp.repair import RepairConfig
from agentexp.trainings import ExecutorConfig, Trainings

FAKE_TRAINER = """
import json, os, signal, subprocess, sys, time

args = dict(a.split("=", 1) for a in sys.argv[1:])
mode = args.get("mode", "finish")
names = ["MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "AGENTEXP_PARENT_RUN_ID",
         "AGENTEXP_CYCLE_TRACE_ID", "PYTHONUNBUFFERED"]
print("slot " + json.dumps({n: os.environ.get(n) for n in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}))
print("argv " + json.dumps(sys.argv[1:]))
print("env " + json.dumps({n: os.environ.get(n) for n in names}))
summary = "agentexp-summary: " + json.dumps({"best": 0.875, "run_id": "mlflow-run-1", "metric": "val_acc"})
if mode == "finish":
    print(summary)
elif mode == "fail":
    for i in range(100):
        print(f"progress line {i}")
    raise RuntimeError("fake crash in the data loader")
elif mode.startswith("opened_then_"):  # its run is left RUNNING: a crash, or a signal it could not handle
    from mlflow.tracking import MlflowClient
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    run_dir = args["hydra.run.dir"].strip("'")
    client.create_run(experiment.experiment_id, tags={"agentexp.run_dir": run_dir, "agentexp.kind": "train"})
    if mode == "opened_then_killed":
        os.kill(os.getpid(), signal.SIGTERM)
    raise RuntimeError("crashed after opening its run")
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


def trainings(ws, store, **cfg) -> Trainings:
    settings = {"trainer_module": "fake_trainer", "poll_interval_s": 0.05, "stop_grace_s": 5.0} | cfg
    executor = ExecutorConfig(**settings)
    launcher = LocalLauncher(executor.stop_grace_s)
    return Trainings(ws, launcher, executor, RepairConfig(enabled=False), tracking.Tracker(store.uri, "test"))


def start(t: Trainings, label: str, overrides: list[str], cycle: int = 1, trace: str = "t1", parent=None):
    assert t.launch(label, overrides, cycle, trace, parent) is None
    return t.active[-1]


def finish(t: Trainings, run: ActiveRun):
    return wait_for(lambda: t.launcher.poll(run))


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


def of_type(ws, kind) -> list:
    return [e for e in ws.events() if isinstance(e, kind)]


def test_launch_journals_logs_passes_env_and_ends_under_its_cycle(ws, store, monkeypatch):
    monkeypatch.setenv(tracking.ENV_PARENT, "not-this-runs-parent")
    t = trainings(ws, store)
    run = start(t, "lr-3e-4", ["mode=finish", "optim.lr=0.0003"], 3, "trace-3", "parent-9")
    assert run.log_path == ws.logs / "lr-3e-4.log"
    assert (run.cycle, run.cycle_trace_id) == (3, "trace-3")
    assert run.overrides == ["mode=finish", "optim.lr=0.0003"]
    (intent,), (launched,) = of_type(ws, Launch), of_type(ws, Launched)
    assert intent.run.run_dir == launched.run.run_dir == run.run_dir
    assert launched.run.handle.pid == run.pid
    (outcome,) = t.watch(30, lambda: False, lambda: None)
    assert outcome.status == "finished"
    assert (outcome.returncode, outcome.metric, outcome.mlflow_run_id) == (0, 0.875, "mlflow-run-1")
    assert outcome.summary["metric"] == "val_acc" and outcome.error_tail == ""
    (end,) = of_type(ws, RunEnd)
    assert (end.cycle, end.cycle_trace_id, end.run_dir, end.run) == (3, "trace-3", run.run_dir, outcome)
    assert t.active == [] and t.spent == 1
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
    t = trainings(ws, store)
    run = start(t, "orphan", ["mode=finish"])
    finish(t, run)
    assert logged(run, "env")["AGENTEXP_PARENT_RUN_ID"] is None


def test_failing_trainer_is_failed_with_the_log_tail(ws, store):
    t = trainings(ws, store)
    outcome = finish(t, start(t, "crashy", ["mode=fail"]))
    assert (outcome.status, outcome.returncode, outcome.metric, outcome.summary) == ("failed", 1, None, None)
    lines = outcome.error_tail.splitlines()
    assert len(lines) <= 40
    assert lines[-1] == "RuntimeError: fake crash in the data loader"
    assert "progress line 99" in outcome.error_tail and "progress line 0\n" not in outcome.error_tail


@pytest.mark.parametrize(("mode", "status"), [("crash", "FAILED"), ("killed", "KILLED")])
def test_a_training_gone_after_opening_its_mlflow_run_ends_that_run(ws, store, mode, status):
    t = trainings(ws, store)
    start(t, "opened", [f"mode=opened_then_{mode}"])
    (outcome,) = t.watch(60, lambda: False, lambda: None)
    assert outcome.status == status.lower()
    (train,) = store.runs("train")
    assert outcome.mlflow_run_id == train.info.run_id
    assert of_type(ws, RunEnd)[0].run.mlflow_run_id == train.info.run_id
    assert store.client.get_run(train.info.run_id).info.status == status  # not left RUNNING


def test_a_reused_label_is_judged_on_its_own_launch(ws, store):
    t = trainings(ws, store)
    finish(t, start(t, "again", ["mode=finish"]))
    outcome = finish(t, start(t, "again", ["mode=fail"], 2, "t2"))
    assert outcome.status == "failed"  # the first launch's summary line does not count
    assert "agentexp-summary" not in outcome.error_tail


def test_stop_all_stops_the_whole_process_group(ws, store):
    t = trainings(ws, store)
    run = start(t, "long", ["mode=sleep"])
    wait_for(lambda: "sleeping" in run.log_path.read_text())
    assert len(group_members(run.pid)) == 2  # the trainer and its own child
    assert t.free_slots() == 0
    started = time.monotonic()
    (outcome,) = t.stop_all()
    assert time.monotonic() - started < 3
    assert (outcome.status, outcome.returncode) == ("killed", -signal.SIGTERM)
    assert "sleeping" in outcome.error_tail
    assert group_members(run.pid) == []
    assert t.free_slots() == 1 and t.active == []
    assert t.launcher.poll(run) == outcome


def test_terminate_kills_a_trainer_ignoring_sigterm_after_the_grace(ws, store):
    t = trainings(ws, store, stop_grace_s=0.5)
    run = start(t, "stubborn", ["mode=stubborn"])
    wait_for(lambda: "ignoring SIGTERM" in run.log_path.read_text())
    started = time.monotonic()
    outcome = t.launcher.terminate(run)
    assert 0.5 <= time.monotonic() - started < 3
    assert (outcome.status, outcome.returncode) == ("killed", -signal.SIGKILL)


def test_terminate_after_the_end_keeps_the_outcome(ws, store):
    t = trainings(ws, store)
    run = start(t, "quick", ["mode=finish"])
    wait_for(lambda: not alive(run.pid))  # exited, not yet polled
    assert t.launcher.terminate(run).status == "finished"


def test_a_restarted_loop_adopts_a_run_from_the_journal_and_polls_it_by_pid(ws, store, tmp_path):
    go = tmp_path / "go"
    first = trainings(ws, store)
    run = start(first, "resumed", ["mode=wait", f"go={go}"])
    second = trainings(ws, store)
    assert second.resume(ws.events(), committed=1) == []
    assert [r.run_dir for r in second.active] == [run.run_dir]
    assert second.launcher.poll(second.active[0]) is None and second.free_slots() == 0
    go.touch()
    (outcome,) = second.watch(30, lambda: False, lambda: None)
    assert (outcome.status, outcome.returncode, outcome.metric) == ("finished", None, 0.875)
    assert first.launcher.poll(run).returncode == 0  # the old process's child is reaped: no zombie stays


def test_resume_returns_the_launch_of_the_uncommitted_cycle_and_skips_ended_runs(ws, store):
    t = trainings(ws, store)
    finish(t, start(t, "done-before", ["mode=finish"], 1, "t1"))
    t.poll(1, "t1", 0, None)
    run = start(t, "cut-short", ["mode=sleep"], 2, "t2")
    again = trainings(ws, store)
    (launch,) = again.resume(ws.events(), committed=1)
    assert (launch.cycle, launch.run.run_label) == (2, "cut-short")
    assert [r.run_dir for r in again.active] == [run.run_dir]
    again.stop_all()


def drop_launched(ws) -> None:
    """The journal as a crash between starting the process and recording it leaves it."""
    lines = ws.events_path.read_text().splitlines()
    ws.events_path.write_text("".join(line + "\n" for line in lines if '"event":"launched"' not in line))


def test_a_process_started_just_before_a_crash_is_found_not_started_twice(ws, store):
    t = trainings(ws, store)
    run = start(t, "orphaned", ["mode=sleep"], 1, "t1")
    drop_launched(ws)
    again = trainings(ws, store)
    (launch,) = again.resume(ws.events(), committed=0)
    assert [r.pid for r in again.active] == [run.pid] and again.spent == 1
    assert len(of_type(ws, Launched)) == 1  # adopted once, recorded once
    again.stop_all()


def test_an_intent_whose_process_never_started_is_started_on_resume(ws, store):
    t = trainings(ws, store)
    run = start(t, "never-ran", ["mode=finish"], 1, "t1")
    finish(t, run)
    drop_launched(ws)
    run.log_path.unlink()  # the process never existed: no log, no output
    again = trainings(ws, store)
    again.resume(ws.events(), committed=0)
    (outcome,) = again.watch(30, lambda: False, lambda: None)
    assert outcome.status == "finished" and len(of_type(ws, Launched)) == 1


def test_an_intent_whose_process_ran_and_died_unrecorded_is_judged_not_rerun(ws, store):
    t = trainings(ws, store)
    run = start(t, "ran-alone", ["mode=fail"], 1, "t1")
    finish(t, run)
    drop_launched(ws)
    again = trainings(ws, store)
    again.resume(ws.events(), committed=0)
    assert again.active == [] and of_type(ws, Launched) == []
    (end,) = of_type(ws, RunEnd)
    assert end.run.status == "failed" and "fake crash" in end.run.error_tail


def test_a_run_stopped_by_its_timeout_while_unwatched_is_killed(ws, store):
    first = trainings(ws, store)
    run = start(first, "slowpoke", ["mode=timeout"])
    wait_for(lambda: first.launcher.poll(run))
    outcome = LocalLauncher(1.0).poll(run)  # a new loop, which never saw the exit code
    assert (outcome.status, outcome.returncode) == ("killed", None)
    assert "the run ended KILLED" in outcome.error_tail


def test_a_reused_pid_is_not_mistaken_for_the_run(ws):
    me = psutil.Process()
    ghost = ActiveRun(
        handle=Handle(pid=me.pid, started_at=me.create_time() - 3600),  # alive, but started an hour later
        run_label="ghost",
        log_path=ws.log_path("ghost"),
        run_dir=ws.root / "runs" / "ghost",
        cycle=1,
        cycle_trace_id="t1",
    )
    outcome = LocalLauncher(1.0).poll(ghost)
    assert (outcome.status, outcome.returncode, outcome.error_tail) == ("failed", None, "")


def test_watch_returns_when_a_run_ends_and_beats(ws, store):
    t = trainings(ws, store, max_concurrent=2)
    start(t, "quick", ["mode=finish"])
    slow = start(t, "slow", ["mode=sleep"])
    beats = []
    started = time.monotonic()
    (outcome,) = t.watch(60, lambda: False, lambda: beats.append(1))
    assert time.monotonic() - started < 10
    assert (outcome.run_label, outcome.status) == ("quick", "finished")
    assert t.active == [slow] and t.launcher.poll(slow) is None and beats
    t.stop_all()


def test_watch_for_every_end_returns_when_all_runs_ended(ws, store):
    t = trainings(ws, store, max_concurrent=2)
    start(t, "one", ["mode=finish"])
    go = ws.root / "go"
    start(t, "two", ["mode=wait", f"go={go}"])
    release = lambda: len(t.active) == 1 and go.touch()  # noqa: E731 - "two" may end once "one" has
    outcomes = t.watch(60, lambda: False, release, first_end=False)
    assert sorted(o.run_label for o in outcomes) == ["one", "two"] and t.active == []
    assert {o.status for o in outcomes} == {"finished"}


def test_watch_honours_should_stop(ws, store):
    t = trainings(ws, store)
    run = start(t, "long", ["mode=sleep"])
    beats, asked = [], []
    started = time.monotonic()
    outcomes = t.watch(60, lambda: asked.append(1) or len(asked) >= 3, lambda: beats.append(1))
    assert outcomes == [] and len(beats) == 3
    assert time.monotonic() - started < 2
    assert t.launcher.poll(run) is None
    t.stop_all()


def test_watch_seconds_are_clamped(ws, store):
    t = trainings(ws, store, monitor_seconds_max=1)
    start(t, "long", ["mode=sleep"])
    started = time.monotonic()
    assert t.watch(10_000, lambda: False, lambda: None) == []
    assert 1 <= time.monotonic() - started < 3
    beats = []
    assert t.watch(-5, lambda: False, lambda: beats.append(1)) == []
    assert beats == [1]  # zero seconds: one look, one heartbeat
    t.stop_all()


def test_drain_stops_the_runs_when_asked(ws, store):
    t = trainings(ws, store)
    start(t, "long", ["mode=sleep"])
    asked = []
    (outcome,) = t.drain(lambda: asked.append(1) or len(asked) > 2, lambda: None)
    assert outcome.status == "killed" and t.active == []


@pytest.mark.parametrize(
    ("requested", "active", "wait", "expected"),
    [
        (0, True, False, 20.0),
        (0, False, False, 0.0),
        (45, True, False, 45.0),
        (9999, False, False, 600.0),
        (60, True, True, 600.0),  # a wait watches up to the bound; the watch ends when a run does
        (60, False, True, 60.0),
    ],
)
def test_monitor_window(ws, store, requested, active, wait, expected):
    t = trainings(ws, store)
    t.active = [object()] if active else []
    assert t.monitor_window(requested, wait=wait) == expected


def test_launch_with_a_missing_interpreter_is_one_clear_failed_end(ws, store, tmp_path):
    t = trainings(ws, store, python_exe=str(tmp_path / "no-python"))
    outcome = t.launch("nope", [], 1, "t1", None)
    assert outcome.status == "failed" and "could not start the trainer" in outcome.error_tail
    assert t.active == [] and [e.run for e in of_type(ws, RunEnd)] == [outcome]


def test_real_trainer_run_is_nested_under_its_parent(ws, store):
    experiment_id = tracking.ensure_store(store.uri, "test")
    parent = store.client.create_run(experiment_id, tags={tracking.KIND: "decision"})
    t = trainings(ws, store, trainer_module="trainers.train", poll_interval_s=0.2)
    run = start(t, "tiny-real", [*TINY, "trainer.epochs=1"], 1, "trace-real", parent.info.run_id)
    outcomes = t.watch(300, lambda: False, lambda: None)
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


def pruning_setup(ws, store, launcher: LocalLauncher) -> tuple[Trainings, MlflowClient]:
    """Trainings with a pruner that checks at every look, and 3 finished peers at val_acc 0.8 by epoch 1."""
    tracker = tracking.Tracker(store.uri, "test")
    client = MlflowClient(store.uri)
    for _ in range(3):
        peer = client.create_run(tracker.experiment_id, tags={tracking.KIND: "train"}).info.run_id
        for epoch, value in enumerate([0.5, 0.8]):
            client.log_metric(peer, "val_acc", value, step=epoch)
        client.set_terminated(peer, "FINISHED")
    executor = ExecutorConfig(trainer_module="fake_trainer", poll_interval_s=0.05, stop_grace_s=5.0)
    pruner = Pruner(PruneConfig(check_every_s=0), tracker, "val_acc", "maximize")
    return Trainings(ws, launcher, executor, RepairConfig(enabled=False), tracker, pruner=pruner), client


def behind_run(t: Trainings, client: MlflowClient, run: ActiveRun, history: list[float]) -> str:
    """The MLflow run of a fake training, 8 epochs planned, with this val_acc history."""
    tags = {tracking.KIND: "train", tracking.RUN_DIR: str(run.run_dir)}
    run_id = client.create_run(t.tracker.experiment_id, tags=tags).info.run_id
    client.log_param(run_id, "trainer.epochs", "8")
    for epoch, value in enumerate(history):
        client.log_metric(run_id, "val_acc", value, step=epoch)
    return run_id


def test_a_training_behind_the_finished_ones_median_is_pruned_and_costs_its_share_of_epochs(ws, store):
    t, client = pruning_setup(ws, store, LocalLauncher(5.0))
    slow = start(t, "slow-run", ["mode=sleep"])
    mine = behind_run(t, client, slow, [0.45])
    assert t.watch(0.3, lambda: False, lambda: None) == [] and t.active  # epoch 0: the warm-up
    client.log_metric(mine, "val_acc", 0.5, step=1)  # epoch 1: best 0.5 < median 0.8
    (outcome,) = t.watch(10, lambda: False, lambda: None)
    assert outcome.status == "killed" and not t.active and not alive(slow.pid)
    assert client.get_run(mine).data.tags[tracking.PRUNED] == "true"
    assert t.spent == pytest.approx(2 / 8)  # the budget paid for the 2 epochs it ran, not for 8


class LateLauncher(LocalLauncher):
    """Its first poll of a run misses its end: the pruner then meets a training that has just finished."""

    def __init__(self, grace: float):
        super().__init__(grace)
        self.missed: set[str] = set()

    def poll(self, run: ActiveRun):
        if run.run_label in self.missed:
            return super().poll(run)
        self.missed.add(run.run_label)
        return None


def test_a_training_that_finished_as_the_pruner_stopped_it_is_neither_pruned_nor_refunded(ws, store):
    t, client = pruning_setup(ws, store, LateLauncher(5.0))
    quick = start(t, "quick", ["mode=finish"])
    mine = behind_run(t, client, quick, [0.45, 0.5])
    wait_for(lambda: not alive(quick.pid))
    (outcome,) = t.watch(10, lambda: False, lambda: None)
    assert outcome.status == "finished"
    assert tracking.PRUNED not in client.get_run(mine).data.tags and t.spent == 1


def test_each_training_gets_a_free_gpu_of_its_own_and_a_share_of_the_cores(ws, store, tmp_path):
    t = trainings(ws, store, gpus=[0, 1], max_concurrent=4, cpu_threads=3)
    assert t.free_slots() == 2  # one slot per GPU, whatever max_concurrent says
    go = tmp_path / "go"
    first, second = (start(t, label, ["mode=wait", f"go={go}"]) for label in ("a", "b"))
    assert t.free_slots() == 0
    wait_for(lambda: "slot" in first.log_path.read_text() and "slot" in second.log_path.read_text())
    seen = [logged(run, "slot") for run in (first, second)]
    assert seen == [
        {"CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "3"},
        {"CUDA_VISIBLE_DEVICES": "1", "OMP_NUM_THREADS": "3"},
    ]
    assert [e.run.gpu for e in of_type(ws, Launched)] == [0, 1]  # a restart knows which GPU each holds
    go.touch()
    t.watch(30, lambda: False, lambda: None)
    third = start(t, "c", ["mode=finish"])
    finish(t, third)
    assert logged(third, "slot")["CUDA_VISIBLE_DEVICES"] == "0"  # freed slots are reused


def test_on_cpu_the_slots_split_the_cores(ws, store, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(8)))
    t = trainings(ws, store, gpus=[], max_concurrent=3)
    assert t.free_slots() == 3
    run = start(t, "cpu", ["mode=finish"])
    finish(t, run)
    assert logged(run, "slot") == {"CUDA_VISIBLE_DEVICES": None, "OMP_NUM_THREADS": str(8 // 3)}
