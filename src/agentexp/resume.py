"""Picking a session up after a restart or a crash: the last committed cycle, the training of a cycle a
crash cut short, and the runs a dead process left RUNNING."""

from __future__ import annotations

from agentexp import record
from agentexp.events import CycleEnd, Launch
from agentexp.launchers.local import alive
from agentexp.launchers.slurm import job_ended
from agentexp.signals import CycleSummary
from agentexp.tracking import Tracker
from agentexp.trainings import Trainings
from agentexp.workspace import State, Workspace


def session(
    ws: Workspace, tracker: Tracker, trainings: Trainings, loop_params: dict
) -> tuple[State, list[CycleSummary]]:
    """The state and cycle history to go on from; this session's loop run is (re)opened."""
    ws.create()
    ws.clear_stop()
    state = ws.load_state() or State()
    state.stop_reason = None
    events = ws.events()
    ends = [e for e in events if isinstance(e, CycleEnd)]
    history = [e.summary for e in ends]
    if ends:
        _complete(ws, tracker, state, ends[-1])
    for launch in trainings.resume(events, state.cycle)[:1]:  # a cycle launches one training
        history.append(_commit_launch(ws, tracker, state, trainings, launch))
    # after the commits above: the cut-short cycle's decision run ends FINISHED
    tracker.reap(alive, job_ended)
    state.loop_run_id = tracker.start_loop(state.session_id, loop_params, state.loop_run_id)
    return state, history


def _complete(ws: Workspace, tracker: Tracker, state: State, end: CycleEnd) -> None:
    """Finish the record of the last committed cycle when a crash cut it short after its cycle_end."""
    state.cycle = max(state.cycle, end.cycle)
    last_line = ws.storyline_tail(1)
    if not last_line or f"[{end.cycle_trace_id}]" not in last_line[0]:
        ws.append_storyline(end.cycle, end.cycle_trace_id, end.story)
    tracker.end_if_running(end.decision_run_id)


def _commit_launch(ws: Workspace, tracker: Tracker, state: State, trainings: Trainings, launch: Launch):
    """A crash cut a cycle short after it launched a training: commit it with the decision it took."""
    run_id = launch.run.parent_run_id
    summary, story, texts = record.recovered(launch)
    tracker.log_decision(run_id, *texts)
    record.commit(
        ws, tracker, state, trainings.active, launch.cycle, launch.cycle_trace_id, run_id, summary, story
    )
    return summary
