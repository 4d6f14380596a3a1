"""The loop as a user runs it: real `agentexp` processes (stop, kill and restart, single instance,
daemon), and the remote LLM faked only at its boundary (HTTP server, `codex` executable, scripts)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from fake_llm_server import FAKE_CODEX, chat_completion, fake_server
from helpers import decision, wait_for, write_script
from mlflow.entities import Metric, RunTag

from agentexp import tracking
from agentexp.cli import build_loop
from agentexp.config import compose_loop
from agentexp.decisions import WorkerDecision
from agentexp.events import CycleEnd, Launch, Launched, MentorEvent, RunEnd
from agentexp.todos import TodoQueue
from agentexp.workspace import Workspace

AGENTEXP = [sys.executable, "-m", "agentexp"]
LONG_TRAINING = "loop.train_overrides=['trainer.epochs=500','debug=fast','data.image_size=16']"


def analyze(note: str = "looked at the confusion matrix of the best run") -> str:
    return decision("analyze", housekeeping={"notes_update": note})


def agentexp(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """One `python -m agentexp` command, run to its end."""
    return subprocess.run([*AGENTEXP, *args], capture_output=True, text=True, timeout=timeout)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def loop_args(tmp_path: Path, raws: list[str], *extra: str) -> list[str]:
    return [
        "llm=scripted",
        f"llm.script={write_script(tmp_path / 'worker.jsonl', raws)}",
        "mentor.enabled=false",
        f"loop.workspace={tmp_path / '.llm_loop'}",
        "executor.poll_interval_s=0.2",
        *extra,
    ]


def spawn_loop(tmp_path: Path, args: list[str], name: str = "loop") -> subprocess.Popen:
    """`agentexp loop ARGS` in the background, its output kept in tmp_path for a failing test to show."""
    out = (tmp_path / f"{name}.out").open("w")
    return subprocess.Popen([*AGENTEXP, "loop", *args], stdout=out, stderr=subprocess.STDOUT, text=True)


def output(tmp_path: Path, name: str = "loop") -> str:
    return (tmp_path / f"{name}.out").read_text()


def cycle_ends(ws: Workspace) -> list[int]:
    return [e.cycle for e in ws.events() if isinstance(e, CycleEnd)]


# ---------------------------------------------------------------- stop during a training


def test_stop_during_training_kills_the_run_and_status_says_stopped(tmp_path, store, ws):
    args = loop_args(tmp_path, [decision()], LONG_TRAINING, "loop.poll_seconds=0", "executor.stop_grace_s=20")
    proc = spawn_loop(tmp_path, args)
    train = wait_for(
        lambda: [r for r in store.runs("train") if r.info.status == "RUNNING"],
        90,
        "a RUNNING train run",
        proc,
    )[0]
    (active,) = ws.read_heartbeat()["active_runs"]  # the state is saved when the cycle ends
    assert train.data.tags[tracking.PID] == str(active["pid"])

    stopped = agentexp("stop", "--wait", "--timeout", "60", "--workspace", str(ws.root))
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip().splitlines()[-1] == "agentexp stopped"
    assert proc.wait(timeout=30) == 0, output(tmp_path)
    assert "loop stopped: stop_requested" in output(tmp_path)

    assert store.client.get_run(train.info.run_id).info.status == "KILLED"
    (loop_run,) = store.runs("loop")
    assert loop_run.info.status == "FINISHED"
    assert all(d.info.status == "FINISHED" for d in store.runs("decision"))
    assert gone(active["pid"])
    leftovers = [
        p.pid for p in psutil.process_iter(["cmdline"]) if str(ws.root) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []
    assert ws.load_state().active_runs == []
    assert [e.run.status for e in ws.events() if isinstance(e, RunEnd)] == ["killed"]
    status = agentexp("status", "--workspace", str(ws.root))
    assert status.returncode == 0 and "agentexp: stopped" in status.stdout


# ---------------------------------------------------------------- restart after SIGKILL


@pytest.mark.parametrize("poll", ["0.2", "0"], ids=["between-cycles", "mid-cycle"])
def test_restart_after_sigkill_neither_repeats_nor_loses_a_cycle(tmp_path, store, ws, poll):
    args = loop_args(tmp_path, [analyze()] * 200, f"loop.poll_seconds={poll}")
    first = spawn_loop(tmp_path, [*args, "loop.max_cycles=200"], "first")
    wait_for(lambda: len(cycle_ends(ws)) >= 3, 60, "3 completed cycles", first)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    before = cycle_ends(ws)
    loop_run_id = ws.load_state().loop_run_id

    second = agentexp("loop", *args, "loop.max_cycles=3")
    assert second.returncode == 0, second.stderr
    assert "loop stopped: max_cycles" in second.stdout

    completed = ws.load_state().cycle
    assert completed == len(before) + 3
    decisions = store.runs("decision")
    finished = [d for d in decisions if d.info.status == "FINISHED"]
    assert len(finished) == completed
    assert sorted(int(d.data.tags[tracking.CYCLE]) for d in finished) == list(range(1, completed + 1))
    interrupted = [d for d in decisions if d.info.status != "FINISHED"]
    assert [d.info.status for d in interrupted] in ([], ["KILLED"])
    assert all(d.data.tags[tracking.CYCLE] == str(len(before) + 1) for d in interrupted)
    (loop_run,) = store.runs("loop")
    assert loop_run.info.run_id == loop_run_id and loop_run.info.status == "FINISHED"
    assert all(d.data.tags[tracking.PARENT_RUN_ID] == loop_run_id for d in decisions)
    assert cycle_ends(ws) == list(range(1, completed + 1))
    assert [line.split()[2] for line in ws.storyline_tail(1000)] == [str(c) for c in range(1, completed + 1)]


def test_a_cycle_killed_after_its_launch_is_committed_with_that_training_not_decided_again(
    tmp_path, store, ws
):
    first = spawn_loop(
        tmp_path, loop_args(tmp_path, [decision()], LONG_TRAINING, "loop.poll_seconds=0"), "first"
    )
    wait_for(lambda: any(isinstance(e, Launched) for e in ws.events()), 60, "the launch", first)
    first.send_signal(signal.SIGKILL)  # mid-cycle: the training runs on, the cycle is not committed
    first.wait(timeout=10)
    assert cycle_ends(ws) == []
    (launched,) = [e for e in ws.events() if isinstance(e, Launched)]

    second = build_loop(
        compose_loop(
            loop_args(
                tmp_path,
                [decision("wait", monitor_seconds=0)],
                LONG_TRAINING,
                "loop.poll_seconds=0",
                "loop.max_cycles=1",
                "executor.monitor_seconds_max=20",  # the wait watches the long training this long
            )
        )
    )
    state = resume_only(second)
    (end, *_) = [e for e in ws.events() if isinstance(e, CycleEnd)]
    assert (end.cycle, end.summary.action, end.summary.run_label) == (1, "train", "resnet18-lr2e-3")
    assert [r.run_dir for r in second.trainings.active] == [
        launched.run.run_dir
    ]  # adopted, not started again
    (first_decision,) = store.runs("decision")
    assert (
        first_decision.info.status == "FINISHED" and first_decision.data.tags["agentexp.recovered"] == "true"
    )
    assert first_decision.data.params["action"] == "train" and state.cycle == 1
    second.run_cycle(state)  # the next cycle is a new decision: no second training of cycle 1
    second.trainings.stop_all()
    assert len(store.runs("train")) == 1 and cycle_ends(ws) == [1, 2]
    assert [e.cycle for e in ws.events() if isinstance(e, Launch)] == [1]


def resume_only(loop):
    """A loop's session start alone (what `run` does before its first cycle)."""
    with loop.ws.lock():
        return loop._resume()


def test_restart_completes_a_cycle_committed_just_before_the_crash(tmp_path, store, ws):
    """Killed between a cycle's cycle_end event and the rest of its record: the restart completes it."""
    args = loop_args(tmp_path, [analyze()] * 3, "loop.poll_seconds=0")
    loop = build_loop(compose_loop([*args, "loop.max_cycles=2"]))
    loop.run()
    # rewind to the moment right after cycle 2's commit: state, storyline and decision run not yet written
    state = ws.load_state()
    state.cycle = 1
    ws.save_state(state)
    ws.storyline_path.write_text("".join(line + "\n" for line in ws.storyline_tail(10)[:-1]))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    second = store.runs("decision")[-1].info.run_id
    store.client.update_run(second, status="RUNNING")
    store.client.set_tag(second, tracking.PID, str(dead.pid))

    build_loop(compose_loop([*args, "loop.max_cycles=1"])).run()
    decisions = store.runs("decision")
    assert [(d.data.tags[tracking.CYCLE], d.info.status) for d in decisions] == [
        ("1", "FINISHED"),
        ("2", "FINISHED"),
        ("3", "FINISHED"),
    ]
    assert ws.load_state().cycle == 3 and cycle_ends(ws) == [1, 2, 3]
    assert [line.split()[2] for line in ws.storyline_tail(10)] == ["1", "2", "3"]


# ---------------------------------------------------------------- single instance, daemon, watch


def finished_training(store, label: str, metric: float) -> None:
    """A finished train run in the store, as the trainer leaves one."""
    experiment = store.client.get_experiment_by_name("test")
    experiment_id = experiment.experiment_id if experiment else store.client.create_experiment("test")
    run = store.client.create_run(experiment_id, run_name=label, tags={tracking.KIND: "train"})
    store.client.log_batch(
        run.info.run_id,
        metrics=[Metric("best_val_acc", metric, 0, 0)],
        tags=[RunTag(tracking.OVERRIDES, json.dumps([f"model.name={label}", f"run_label={label}"]))],
    )
    store.client.set_terminated(run.info.run_id, "FINISHED")


def test_single_instance_and_the_daemon_start_watch_stop(tmp_path, store, ws):
    args = loop_args(tmp_path, [analyze()] * 500, "loop.max_cycles=500", "loop.poll_seconds=0.2")
    first = spawn_loop(tmp_path, args)
    wait_for(lambda: ws.holder_pid() == first.pid, 30, "the loop to hold its workspace", first)

    second = agentexp("loop", *args)
    assert second.returncode != 0
    assert second.stderr.strip() == f"Error: another agentexp loop is running in {ws.root} (pid {first.pid})"
    refused = agentexp("start", "--workspace", str(ws.root), *args)
    assert refused.returncode != 0
    assert refused.stderr.strip() == f"Error: agentexp is already running in {ws.root} (pid {first.pid})"
    assert first.poll() is None and len(store.runs("loop")) == 1

    assert agentexp("stop", "--wait", "--workspace", str(ws.root)).returncode == 0
    assert first.wait(timeout=30) == 0
    cycles_before = len(cycle_ends(ws))

    for label, metric in [
        ("resnet18-base", 0.91),
        ("convnext-atto", 0.97),
        ("mobilenet", 0.5),
        ("regnet", 0.93),
    ]:
        finished_training(store, label, metric)
    elsewhere = tmp_path / "elsewhere"
    started = agentexp("start", "--workspace", str(ws.root), *args, f"loop.workspace={elsewhere}")
    assert started.returncode == 0, started.stderr
    daemon = ws.holder_pid()
    assert not elsewhere.exists()  # --workspace wins over an override
    assert daemon is not None and f"agentexp started (pid {daemon})" in started.stdout
    wait_for(lambda: len(cycle_ends(ws)) > cycles_before, 30, "a cycle of the daemon")

    frame = agentexp("watch", "--once", "--workspace", str(ws.root))
    assert frame.returncode == 0, frame.stderr
    assert f"agentexp: running (pid {daemon})" in frame.stdout
    assert frame.stdout.count("agentexp: ") == 1  # one frame
    top = [
        line
        for line in frame.stdout.splitlines()
        if any(n in line for n in ("convnext", "regnet", "resnet18"))
    ]
    assert [line.split("│")[2].strip() for line in top] == ["convnext-atto", "regnet", "resnet18-base"]
    assert "mobilenet" not in frame.stdout

    stopped = agentexp("stop", "--wait", "--workspace", str(ws.root))
    assert stopped.returncode == 0 and "agentexp stopped" in stopped.stdout
    wait_for(lambda: gone(daemon), 10, "the daemon to exit")
    assert "agentexp: stopped" in agentexp("status", "--workspace", str(ws.root)).stdout
    assert [r.info.status for r in store.runs("loop")] == ["FINISHED"]


# ---------------------------------------------------------------- remote backends through the loop


def run_loop(tmp_path: Path, *overrides: str):
    """The loop in-process on a real backend config; returns (reason, workspace)."""
    base = ["mentor.enabled=false", f"loop.workspace={tmp_path / '.llm_loop'}", "loop.poll_seconds=0"]
    loop = build_loop(compose_loop([*base, *overrides]))
    return loop.run(), loop.ws


def test_openai_backend_usage_becomes_the_decision_runs_token_metrics(tmp_path, store, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with fake_server(lambda path, body: (200, chat_completion(analyze()))) as (url, seen):
        reason, _ = run_loop(
            tmp_path,
            "llm=openai",
            f"llm.base_url={url}/v1",
            "llm.input_cost_per_mtok=2.0",
            "llm.output_cost_per_mtok=8.0",
            "loop.max_cycles=2",
        )
    assert reason == "max_cycles" and len(seen) == 2
    decisions = store.runs("decision")
    assert [d.data.params["action"] for d in decisions] == ["analyze", "analyze"]
    for run in decisions:
        metrics = run.data.metrics
        assert (metrics["input_tokens"], metrics["output_tokens"], metrics["llm_calls"]) == (123, 45, 1)
        assert metrics["cost_usd"] == pytest.approx((123 * 2.0 + 45 * 8.0) / 1e6)
        assert run.data.params["llm"] == "openai"
    assert seen[0]["body"]["response_format"]["json_schema"]["name"] == "worker_answer"


def test_openai_server_that_never_answers_downgrades_the_cycle_to_wait(tmp_path, store, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with fake_server(lambda path, body: None) as (url, _):
        start = time.monotonic()
        reason, ws = run_loop(
            tmp_path,
            "llm=openai",
            f"llm.base_url={url}/v1",
            "llm.timeout_s=1",
            "llm.retry.backoff_s=0.1",
            "loop.max_cycles=1",
        )
    assert time.monotonic() - start < 30
    assert reason == "max_cycles"
    (run,) = store.runs("decision")
    assert run.data.params["action"] == "wait"
    assert run.data.tags["agentexp.worker_error"] == f"openai backend: no answer from {url}/v1 within 1s"
    assert run.data.metrics["llm_calls"] == 3 and run.data.metrics["input_tokens"] == 0  # 2 retries
    assert store.runs("loop")[0].info.status == "FINISHED"
    assert cycle_ends(ws) == [1]


def test_codex_backend_usage_becomes_the_decision_runs_token_metrics(tmp_path, store, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "codex"
    fake.write_text(FAKE_CODEX.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    home = tmp_path / ".llm_loop" / "codex_home"
    home.mkdir(parents=True)
    (home / "auth.json").write_text("{}")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CODEX_LOG", str(tmp_path / "codex_call.json"))
    monkeypatch.setenv("FAKE_CODEX_MESSAGE", analyze("codex looked at the data"))
    monkeypatch.delenv("CODEX_API_KEY", raising=False)

    reason, ws = run_loop(tmp_path, "llm=codex", "llm.output_cost_per_mtok=10.0", "loop.max_cycles=1")
    assert reason == "max_cycles"
    (run,) = store.runs("decision")
    metrics = run.data.metrics
    assert (metrics["input_tokens"], metrics["output_tokens"]) == (1200, 80)
    assert metrics["cost_usd"] == pytest.approx(80 * 10.0 / 1e6)
    assert run.data.params["action"] == "analyze" and run.data.params["llm"] == "codex"
    call = json.loads((tmp_path / "codex_call.json").read_text())
    assert call["codex_home"] == str(home) and "Mission: digits" in call["prompt"]
    assert "codex looked at the data" in ws.workpad_tail(2000)


# ---------------------------------------------------------------- the mentor through the loop


def review(verdict: str, **fields) -> str:
    rationale = "three analyze cycles in a row and no training since cycle 1: the worker is idling"
    return json.dumps({"verdict": verdict, "rationale": rationale, **fields})


def test_mentor_replacement_is_what_the_decision_run_records_and_executes(tmp_path, store):
    replacement = json.loads(analyze("mentor: compare per-class accuracy before the next run"))
    mentor_script = write_script(
        tmp_path / "mentor.jsonl",
        [
            review(
                "off_track",
                critical_question="Which classes does the best run confuse?",
                replacement=replacement,
                todo="plot the confusion matrix of the best run",
            ),
            review("on_track", todo="an on_track review adds no TODO"),
        ],
    )
    worker = [decision(), analyze("worker: the baseline looks fine")]
    reason, ws = run_loop(
        tmp_path,
        "llm=scripted",
        f"llm.script={write_script(tmp_path / 'worker.jsonl', worker)}",
        "mentor.enabled=true",
        "mentor/llm=scripted",
        f"mentor.llm.script={mentor_script}",
        "mentor.every_n_cycles=1",
        "loop.max_cycles=2",
    )
    assert reason == "max_cycles"
    assert store.runs("train") == []  # the worker's train decision was replaced
    first, second = store.runs("decision")
    assert first.data.params["action"] == "analyze" and first.data.params["mentor_trigger"] == "cadence"
    recorded = json.loads(
        Path(store.client.download_artifacts(first.info.run_id, "decision.json")).read_text()
    )
    assert WorkerDecision.model_validate(recorded) == WorkerDecision.model_validate(replacement)
    assert first.data.metrics["llm_calls"] == 2
    workpad = ws.workpad_tail(4000)
    assert "mentor: compare per-class accuracy" in workpad and "worker: the baseline looks fine" in workpad
    mentor_events = [e.model_dump(mode="json") for e in ws.events() if isinstance(e, MentorEvent)]
    assert [
        (e["cycle"], e["mentor"]["review"]["verdict"], e["mentor"]["replaced"]) for e in mentor_events
    ] == [
        (1, "off_track", True),
        (2, "on_track", False),
    ]
    todos = [(t.text, t.source) for t in TodoQueue(ws.artifacts).open_items()]
    assert todos == [("plot the confusion matrix of the best run", "mentor")]
    assert "Which classes does the best run confuse?" in ws.mentor_notes_tail(2000)


# ---------------------------------------------------------------- a prompt stop, the truth after a crash


def test_stop_interrupts_an_llm_call_in_flight_and_waits_for_the_process(tmp_path, store, ws, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with fake_server(lambda path, body: None) as (url, seen):  # never answers
        args = ["llm=openai", f"llm.base_url={url}/v1", "llm.timeout_s=600", "mentor.enabled=false"]
        args += [f"loop.workspace={ws.root}", "loop.max_cycles=5"]
        proc = spawn_loop(tmp_path, args)
        wait_for(lambda: seen, 60, "the LLM call", proc)
        started = time.monotonic()
        stopped = agentexp("stop", "--wait", "--timeout", "60", "--workspace", str(ws.root))
        assert stopped.returncode == 0, stopped.stderr
        assert time.monotonic() - started < 20  # not the 600 s of the call's timeout
        assert proc.poll() is not None  # `stop --wait` returned after the process was gone
    assert proc.returncode == 0 and "loop stopped: stop_requested" in output(tmp_path)
    assert "agentexp: stopped (stop_requested)" in agentexp("status", "--workspace", str(ws.root)).stdout


def test_status_after_a_sigkill_says_crashed_and_lists_no_ended_training(tmp_path, store, ws):
    quick = "loop.train_overrides=['trainer.epochs=1','debug=fast','data.image_size=16']"
    proc = spawn_loop(
        tmp_path, loop_args(tmp_path, [decision(monitor_seconds=600)], quick, "loop.poll_seconds=0")
    )
    wait_for(lambda: (ws.read_heartbeat() or {}).get("active_runs"), 60, "a running training", proc)
    (run,) = ws.read_heartbeat()["active_runs"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    wait_for(lambda: gone(run["pid"]), 120, "the training to end by itself")
    status = agentexp("status", "--workspace", str(ws.root))
    assert status.returncode == 0, status.stderr
    assert "agentexp: crashed (last heartbeat" in status.stdout
    assert "active runs: none" in status.stdout and run["run_label"] not in status.stdout.split("top-")[0]
