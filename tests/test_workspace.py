"""The .llm_loop/ workspace: atomic state, records, notes, TODO queue, stop file and single-instance lock."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import agentexp.workspace as workspace_module
from agentexp.events import EVENT, CycleEnd, CycleStart, QualityGate, RunEnd
from agentexp.files import atomic_write_text
from agentexp.launchers.base import ActiveRun, Handle, RunOutcome
from agentexp.signals import CycleSummary
from agentexp.todos import TodoFile, TodoQueue
from agentexp.workspace import (
    AlreadyRunning,
    State,
    Workspace,
    WorkspaceError,
)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / ".llm_loop", clock=lambda: 1000.0).create()


def _state(cycle: int) -> State:
    run = ActiveRun(
        handle=Handle(pid=4242, started_at=10.0, host="node-1"),
        run_label="resnet18-lr3e-4",
        log_path=Path("/x/logs/resnet18-lr3e-4.log"),
        run_dir=Path("/x/runs/resnet18-lr3e-4-trace"),
        cycle=cycle,
        cycle_trace_id=f"trace-{cycle}",
        overrides=["optim.lr=0.0003"],
    )
    return State(session_id="s1", loop_run_id="abc", cycle=cycle, active_runs=[run], stop_reason="max_cycles")


def test_create_makes_the_folders(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "w").create()
    assert (ws.root / "logs").is_dir() and (ws.root / "artifacts").is_dir()


def test_state_round_trips_and_fresh_workspace_has_none(ws: Workspace) -> None:
    assert ws.load_state() is None
    ws.save_state(_state(3))
    assert Workspace(ws.root).load_state() == _state(3)
    assert json.loads(ws.state_path.read_text())["active_runs"][0]["handle"]["pid"] == 4242


def test_failed_state_write_leaves_old_state_and_no_temp_files(ws: Workspace, monkeypatch) -> None:
    ws.save_state(_state(1))

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(workspace_module.os, "fsync", disk_full)
    with pytest.raises(OSError):
        ws.save_state(_state(2))
    monkeypatch.undo()
    assert ws.load_state() == _state(1)
    assert sorted(p.name for p in ws.root.iterdir()) == ["artifacts", "logs", "state.json"]


def test_write_that_fails_midway_keeps_the_old_file(tmp_path: Path) -> None:
    folder = tmp_path / "atomic"
    folder.mkdir()
    target = folder / "f.json"
    atomic_write_text(target, "old")
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(target, "new \ud800 text")  # a lone surrogate cannot be encoded
    assert target.read_text() == "old" and list(folder.iterdir()) == [target]


def test_corrupt_state_is_one_clear_error(ws: Workspace) -> None:
    ws.state_path.write_text('{"cycle": "many"}')
    with pytest.raises(WorkspaceError, match="state.json is not a valid agentexp state"):
        ws.load_state()


def test_heartbeat_has_time_pid_and_info(ws: Workspace) -> None:
    ws.heartbeat(cycle=4, phase="monitor", loss=float("nan"))
    beat = json.loads(ws.heartbeat_path.read_text())
    assert beat == {"ts": 1000.0, "pid": os.getpid(), "cycle": 4, "phase": "monitor", "loss": None}
    assert ws.read_heartbeat() == beat


def test_events_are_typed_one_json_object_per_line(ws: Workspace) -> None:
    outcome = RunOutcome(run_label="r", status="failed", returncode=1, metric=float("nan"), error_tail="a\nb")
    written = [
        ws.append_event(CycleStart(cycle=1, cycle_trace_id="t1")),
        ws.append_event(QualityGate(cycle=1, cycle_trace_id="t1", quality_gate=["bad key"])),
        ws.append_event(RunEnd(cycle=1, cycle_trace_id="t1", run=outcome)),
    ]
    lines = ws.events_path.read_text().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["event"] for r in records] == ["cycle_start", "quality_gate", "run_end"]
    assert all(r["cycle_trace_id"] == "t1" and r["cycle"] == 1 and r["ts"] == 1000.0 for r in records)
    assert records[2]["run"]["error_tail"] == "a\nb" and records[2]["run"]["metric"] is None  # strict JSON
    assert ws.events()[:2] == written[:2]  # the RunEnd's NaN came back as null
    assert [type(e) for e in ws.events()] == [CycleStart, QualityGate, RunEnd]


def test_events_reader_skips_a_line_cut_by_a_crash_and_lines_of_no_known_event(ws: Workspace) -> None:
    summary = CycleSummary(cycle=1, action="wait", outcome="waited")
    ws.append_event(CycleEnd(cycle=1, cycle_trace_id="t1", summary=summary, decision_run_id="d", story="s"))
    with ws.events_path.open("a") as handle:
        handle.write('{"ts": 1, "cycle": 2, "cycle_trace_id": "t2", "event": "decision"}\n{"ts": 1, "cyc')
    assert [e.event for e in ws.events()] == ["cycle_end"]


def test_an_event_is_validated_when_written_and_read() -> None:
    with pytest.raises(ValueError, match="quality_gate"):
        QualityGate(cycle=1, cycle_trace_id="t1", quality_gate="not a list")
    assert EVENT.validate_json('{"cycle": 1, "cycle_trace_id": "t", "event": "cycle_start"}').ts == 0.0


def test_storyline_has_one_line_per_cycle(ws: Workspace) -> None:
    ws.append_storyline(1, "t1", "trained resnet18\n\n  val_acc 0.91")
    ws.append_storyline(2, "t2", "waited")
    lines = ws.storyline_path.read_text().splitlines()
    assert lines == ["- cycle 1 [t1] trained resnet18 val_acc 0.91", "- cycle 2 [t2] waited"]
    assert ws.storyline_tail(1) == ["- cycle 2 [t2] waited"]


def test_workpad_tail_is_the_latest_part_of_each_section(ws: Workspace) -> None:
    for cycle in range(1, 40):
        ws.append_workpad("Notes", cycle, f"note number {cycle} " + "x" * 50)
    ws.append_workpad("Data Exploration", 2, "class 3 is rare")
    ws.append_workpad("Notes", 40, "## Data Exploration\nnot a heading, just text")
    tail = ws.workpad_tail(200, section="Notes")
    assert "not a heading" in tail and "note number 1 " not in tail
    both = ws.workpad_tail(400)
    assert both.index("## Notes") < both.index("class 3 is rare")
    text = ws.workpad_path.read_text()
    assert text.count("\n## Data Exploration\n") == 1 and "note number 1 " in text


def test_a_workpad_note_is_redacted_and_older_ones_are_not_scanned_again(ws: Workspace, monkeypatch) -> None:
    ws.append_workpad("Notes", 1, "first note " + "x" * 5000)
    scanned = []
    redact = workspace_module.redact
    monkeypatch.setattr(workspace_module, "redact", lambda text: scanned.append(text) or redact(text))
    ws.append_workpad("Notes", 2, "api_key=sk-proj-abcdefghijklmnop1234 leaked")
    text = ws.workpad_path.read_text()
    assert "sk-proj-abcdefghijklmnop1234" not in text and "[REDACTED] leaked" in text
    assert "first note" in text and sum(map(len, scanned)) < 100


def test_mentor_notes_tail_is_the_end(ws: Workspace) -> None:
    ws.append_mentor_note(1, "first: try augmentation")
    ws.append_mentor_note(5, "latest: try a convnext")
    tail = ws.mentor_notes_tail(40)
    assert "latest: try a convnext" in tail and "first" not in tail


def test_log_path_is_under_logs_and_refuses_odd_labels(ws: Workspace) -> None:
    assert ws.log_path("resnet18-a.1") == ws.root / "logs" / "resnet18-a.1.log"
    for label in ["../evil", "a/b", "x\0y", ""]:
        with pytest.raises(ValueError):
            ws.log_path(label)


def test_stop_request_is_seen_by_another_reader_and_cleared(ws: Workspace) -> None:
    assert not ws.stop_requested()
    Workspace(ws.root).request_stop()
    assert ws.stop_requested()
    ws.clear_stop()
    assert not ws.stop_requested() and not (ws.root / "STOP").exists()


HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agentexp.workspace import Workspace
    with Workspace(Path(sys.argv[1])).lock():
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def _holder(root: Path) -> subprocess.Popen:
    src = Path(workspace_module.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_instance_is_refused_while_another_process_holds_the_lock(ws: Workspace) -> None:
    holder = _holder(ws.root)
    try:
        assert ws.holder_pid() == holder.pid
        expected = rf"another agentexp loop is running in .* \(pid {holder.pid}\)"
        with pytest.raises(AlreadyRunning, match=expected), ws.lock():
            pass
    finally:
        holder.communicate("\n", timeout=10)
    assert ws.holder_pid() is None
    with ws.lock():
        assert ws.holder_pid() == os.getpid()
    assert ws.holder_pid() is None


def test_lock_of_a_killed_loop_is_free_again(ws: Workspace) -> None:
    holder = _holder(ws.root)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    holder.stdin.close()
    holder.stdout.close()
    assert (ws.root / "logs" / "loop.pid").exists()  # stale pid file left behind by the kill
    assert ws.holder_pid() is None
    with ws.lock():
        pass


# shared TODO queue ------------------------------------------------------------------------------


@pytest.fixture
def todos(ws: Workspace) -> TodoQueue:
    return TodoQueue(ws.artifacts)


def test_todo_dedupes_against_open_items_ignoring_case_and_spaces(todos: TodoQueue) -> None:
    assert todos.add(["Try mixup"], "worker", 1) == [1]
    assert todos.add(["  try   MIXUP ", "check class balance"], "worker", 2) == [2]
    assert [i.text for i in todos.open_items()] == ["Try mixup", "check class balance"]


def test_todo_text_is_cut_flattened_and_stored_verbatim(todos: TodoQueue) -> None:
    [new_id] = todos.add(["rm -rf / ; $(curl x)\n" + "y" * 400], "worker", 1)
    [item] = todos.open_items()
    assert item.id == new_id and len(item.text) == 300 and item.text.startswith("rm -rf / ; $(curl x) yyy")


def test_todo_caps_tighten_as_the_backlog_grows(todos: TodoQueue) -> None:
    accepted = [len(todos.add([f"a{c}", f"b{c}", f"c{c}"], "worker", c)) for c in range(1, 10)]
    # 2 per call below 5 open, 1 per call below 10, then none
    assert accepted == [2, 2, 2, 1, 1, 1, 1, 0, 0]
    assert len(todos.open_items()) == 10


def test_todo_hard_cap_holds_for_the_mentor_too(todos: TodoQueue) -> None:
    for cycle in range(1, 25):
        todos.add([f"mentor challenge {cycle}", "second one is always cut"], "mentor", cycle)
    assert len(todos.open_items()) == 20
    assert todos.add(["one more"], "mentor", 30) == []


def test_todo_resolve_frees_room_and_ids_stay_monotonic(todos: TodoQueue) -> None:
    todos.add(["a", "b"], "worker", 1)
    assert todos.resolve([1, 99]) == [1]
    assert todos.resolve([1]) == []
    assert todos.add(["a"], "worker", 2) == [3]  # a resolved text may come back, with a new id
    assert [i.id for i in todos.open_items()] == [2, 3]
    md = todos.md_path.read_text()
    assert "- [x] #1 (worker, cycle 1) a" in md and "- [ ] #3 (worker, cycle 2) a" in md
    assert [i.id for i in TodoQueue(todos.json_path.parent).open_items()] == [2, 3]


def test_todo_focus_is_oldest_and_newest_open(todos: TodoQueue) -> None:
    assert todos.focus() == []
    todos.add(["only"], "worker", 1)
    assert [i.text for i in todos.focus()] == ["only"]
    todos.add(["second", "third"], "worker", 2)
    todos.add(["fourth"], "mentor", 3)
    todos.resolve([1])
    assert [i.text for i in todos.focus()] == ["second", "fourth"]


def test_todo_reads_parse_an_unchanged_queue_once_and_see_every_change(todos: TodoQueue, monkeypatch) -> None:
    todos.add(["a", "b"], "worker", 1)
    parses = []
    validate = TodoFile.model_validate_json
    monkeypatch.setattr(TodoFile, "model_validate_json", lambda text: parses.append(1) or validate(text))
    for _ in range(3):
        assert [i.text for i in TodoQueue(todos.json_path.parent).open_items()] == ["a", "b"]
    assert len(parses) == 1
    todos.open_items()[0].resolved = True  # a caller changing what it got leaves the queue as it is
    assert [i.text for i in todos.focus()] == ["a", "b"]
    queue = todos.load()  # another process rewrites the file, e.g. `agentexp todo`
    queue.items[0].text = "edited elsewhere"
    atomic_write_text(todos.json_path, queue.model_dump_json())
    assert [i.text for i in todos.open_items()] == ["edited elsewhere", "b"]
    todos.resolve([2])
    assert [i.text for i in todos.open_items()] == ["edited elsewhere"]
