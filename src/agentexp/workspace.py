"""The `.llm_loop/` workspace: state, heartbeat, events, storyline, notes, stop file, single-instance lock."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentexp.events import EVENT, Event
from agentexp.files import atomic_write_text, escape_headings, finite, flatten, tail
from agentexp.launchers.base import ActiveRun
from agentexp.redact import redact

log = logging.getLogger(__name__)

WorkpadSection = Literal["Notes", "Data Exploration"]
RUN_LABEL_RE = re.compile(r"^[A-Za-z0-9._-]{1,80}$")


class WorkspaceError(Exception):
    """A workspace problem a user can fix, stated in one sentence."""


class AlreadyRunning(WorkspaceError):
    """Another loop holds this workspace's single-instance lock."""


class State(BaseModel):
    """What the loop needs to resume after a crash: counters and live runs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    session_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    """Identifies one loop session across restarts."""
    loop_run_id: str | None = None
    """MLflow run id of this session's loop run."""
    cycle: int = 0
    """Number of completed cycles."""
    active_runs: list[ActiveRun] = Field(default_factory=list)
    """Training processes still being watched (saved once per cycle; the events journal has the rest)."""
    stop_reason: str | None = None
    """Why the last session stopped (None while it runs)."""
    llm_calls: int = 0
    """LLM calls of this session, re-asks included (the call budget)."""
    cost_usd: float = 0.0
    """LLM cost of this session (the cost budget)."""


class Workspace:
    """The only writer of `.llm_loop/`; `root` is that directory."""

    def __init__(self, root: Path, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.clock = clock
        self.logs = self.root / "logs"
        self.artifacts = self.root / "artifacts"
        self.state_path = self.root / "state.json"
        self.heartbeat_path = self.logs / "daemon_heartbeat.json"
        self.events_path = self.logs / "events.jsonl"
        self.storyline_path = self.root / "storyline.md"
        self.workpad_path = self.artifacts / "workpad.md"
        self.mentor_notes_path = self.artifacts / "mentor_notes.md"
        self.stop_path = self.root / "STOP"
        self.finishup_path = self.root / "FINISH_UP.json"
        self.lock_path = self.logs / "loop.lock"
        self.pid_path = self.logs / "loop.pid"

    def create(self) -> Workspace:
        """Create the folders (idempotent)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        return self

    # state ---------------------------------------------------------------------------------------

    def load_state(self) -> State | None:
        """The saved state, or None when the workspace has none yet."""
        if not self.state_path.exists():
            return None
        try:
            return State.model_validate_json(self.state_path.read_text(encoding="utf-8"))
        except ValidationError as exc:
            msg = f"{self.state_path} is not a valid agentexp state ({exc.error_count()} errors)"
            raise WorkspaceError(msg + "; move it away to start a fresh session") from exc

    def save_state(self, state: State) -> None:
        """Write state.json atomically."""
        self.create()
        atomic_write_text(self.state_path, state.model_dump_json(indent=2))

    # heartbeat and events ------------------------------------------------------------------------

    def heartbeat(self, **info: Any) -> None:
        """Refresh logs/daemon_heartbeat.json with the time, this pid and `info`."""
        self.create()
        record = {"ts": self.clock(), "pid": os.getpid(), **finite(info)}
        # no fsync: a heartbeat is rewritten every cycle and every monitoring poll; losing one is harmless
        atomic_write_text(self.heartbeat_path, json.dumps(record, default=str), durable=False)

    def read_heartbeat(self) -> dict[str, Any] | None:
        """The last heartbeat, or None when there is none."""
        if not self.heartbeat_path.exists():
            return None
        return json.loads(self.heartbeat_path.read_text(encoding="utf-8"))

    def append_event(self, event: Event) -> Event:
        """Append one event as a JSON line to logs/events.jsonl (stamped with the time) and return it."""
        stamped = event.model_copy(update={"ts": self.clock()})
        self.create()
        with self.events_path.open("a", encoding="utf-8") as handle:
            handle.write(redact(stamped.model_dump_json()) + "\n")
        return stamped

    def events(self) -> list[Event]:
        """Every event so far, oldest first; a line cut short by a crash (or not an event) is skipped."""
        if not self.events_path.exists():
            return []
        out = []
        for number, line in enumerate(self.events_path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                out.append(EVENT.validate_json(line))
            except ValidationError:
                log.warning("skipping unreadable line %d of %s", number, self.events_path)
        return out

    # storyline, workpad, mentor notes ------------------------------------------------------------

    def append_storyline(self, cycle: int, cycle_trace_id: str, text: str) -> None:
        """Add the cycle's one storyline line."""
        self.create()
        with self.storyline_path.open("a", encoding="utf-8") as handle:
            handle.write(f"- cycle {cycle} [{cycle_trace_id}] {redact(flatten(text))}\n")

    def storyline_tail(self, lines: int = 10) -> list[str]:
        """The last `lines` storyline lines, read from the end of the file (it grows by a line a cycle)."""
        if lines <= 0 or not self.storyline_path.exists():
            return []
        with self.storyline_path.open("rb") as handle:
            size, chunk = handle.seek(0, os.SEEK_END), 16384
            while True:
                start = max(0, size - chunk)
                handle.seek(start)
                found = handle.read().splitlines()
                if start == 0 or len(found) > lines:  # past the first line, which may be cut
                    break
                chunk *= 4
        return [line.decode("utf-8", errors="replace") for line in found[-lines:]]

    def append_workpad(self, section: WorkpadSection, cycle: int, text: str) -> None:
        """Add an entry at the end of a workpad section."""
        if section not in get_args(WorkpadSection):
            raise ValueError(f"unknown workpad section {section!r}")
        self.create()
        sections = self._workpad_sections()
        # only the new entry is redacted: the rest was when it was written (at 800 notes, redacting the
        # whole workpad took longer than the rest of the cycle)
        sections[section] += f"\n### cycle {cycle}\n{redact(escape_headings(text.strip()))}\n"
        body = "".join(f"## {name}\n{content}\n" for name, content in sections.items())
        atomic_write_text(self.workpad_path, "# Workpad\n\n" + body)

    def workpad_tail(self, chars: int, section: WorkpadSection | None = None) -> str:
        """The latest `chars` characters of one section, or of each section sharing `chars`."""
        sections = self._workpad_sections()
        names = [section] if section else list(sections)
        share = chars // len(names)
        return "\n".join(f"## {name}\n{sections[name].strip()[-share:] if share else ''}\n" for name in names)

    def _workpad_sections(self) -> dict[str, str]:
        sections = dict.fromkeys(get_args(WorkpadSection), "")
        if not self.workpad_path.exists():
            return sections
        # lines are joined once: `+=` on a long str held in a dict copies it every time
        parts: dict[str, list[str]] = {name: [] for name in sections}
        current = None
        for line in self.workpad_path.read_text(encoding="utf-8").splitlines(keepends=True):
            name = line[3:].strip() if line.startswith("## ") else None
            if name in parts:
                current = name
            elif current:
                parts[current].append(line)
        joined = {name: "".join(lines) for name, lines in parts.items()}
        return {
            name: content.rstrip("\n") + "\n" if content.strip() else "" for name, content in joined.items()
        }

    def append_mentor_note(self, cycle: int, text: str) -> None:
        """Add an entry to artifacts/mentor_notes.md."""
        self.create()
        new = not self.mentor_notes_path.exists()
        with self.mentor_notes_path.open("a", encoding="utf-8") as handle:
            handle.write(("# Mentor notes\n" if new else "") + f"\n### cycle {cycle}\n")
            handle.write(redact(escape_headings(text.strip())) + "\n")

    def mentor_notes_tail(self, chars: int) -> str:
        """The latest `chars` characters of the mentor notes."""
        return tail(self.mentor_notes_path, chars)

    # training logs, stop requests ----------------------------------------------------------------

    def log_path(self, run_label: str) -> Path:
        """Where a training's stdout+stderr go."""
        if not RUN_LABEL_RE.match(run_label):
            raise ValueError(f"run label {run_label!r} is not [A-Za-z0-9._-]")
        return self.logs / f"{run_label}.log"

    def request_stop(self) -> None:
        """Ask the running loop to stop after its current step."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.stop_path, json.dumps({"ts": self.clock(), "pid": os.getpid()}))

    def stop_requested(self) -> bool:
        """True while a stop request is pending."""
        return self.stop_path.exists()

    def clear_stop(self) -> None:
        """Forget a stop request."""
        self.stop_path.unlink(missing_ok=True)

    # finish-up schedule --------------------------------------------------------------------------

    def read_finishup(self) -> dict[str, Any] | None:
        """The finish-up schedule as stored, or None when there is none."""
        try:
            text = self.finishup_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise WorkspaceError(f"{self.finishup_path} is not valid JSON; schedule finish-up again") from exc

    def write_finishup(self, schedule: dict[str, Any]) -> None:
        """Replace FINISH_UP.json atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.finishup_path, json.dumps(schedule, indent=2))

    def clear_finishup(self) -> None:
        """Forget the finish-up schedule."""
        self.finishup_path.unlink(missing_ok=True)

    # single-instance lock ------------------------------------------------------------------------

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the single-instance lock; raise AlreadyRunning when another process holds it."""
        self.create()
        file_lock = FileLock(self.lock_path, timeout=0)
        try:
            file_lock.acquire()
        except Timeout:
            pid = self._recorded_pid()
            raise AlreadyRunning(
                f"another agentexp loop is running in {self.root} (pid {pid or 'unknown'})"
            ) from None
        try:
            atomic_write_text(self.pid_path, str(os.getpid()))
            yield
        finally:
            self.pid_path.unlink(missing_ok=True)
            file_lock.release()

    def holder_pid(self) -> int | None:
        """Pid of the loop holding the lock, or None when no loop runs (a stale pid file is ignored)."""
        if not self.lock_path.exists():
            return None
        probe = FileLock(self.lock_path, timeout=0)
        try:
            probe.acquire()
        except Timeout:
            return self._recorded_pid()
        probe.release()
        return None

    def _recorded_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text(encoding="utf-8").strip())
        except (FileNotFoundError, ValueError):
            return None

    # data link and fresh reset -------------------------------------------------------------------

    @property
    def data_link(self) -> Path:
        """The data link: a `data` symlink to the user's dataset."""
        return self.root / "data"

    def link_data(self, target: Path) -> Path:
        """Point the data link at `target`, replacing an earlier link; returns the absolute target."""
        target = Path(target).expanduser().resolve()
        if not target.exists():
            raise WorkspaceError(f"{target} does not exist: link-data needs your dataset's folder or file")
        if self.data_link.exists() and not self.data_link.is_symlink():
            raise WorkspaceError(f"{self.data_link} is a real folder or file, not a link: move it away first")
        self.root.mkdir(parents=True, exist_ok=True)
        staged = self.root / f".data.{uuid.uuid4().hex[:8]}.tmp"
        staged.symlink_to(target, target_is_directory=target.is_dir())
        os.replace(staged, self.data_link)  # atomic: the link is the old one or the new one, never absent
        return target

    def reset(self, archive: bool, keep: Iterable[str] = ()) -> Path | None:
        """Empty the workspace: move it whole to `<name>_archive/<UTC time>/` beside it (returned) or
        delete it; entries named in `keep` (codex_home, data) move into the fresh, empty workspace.

        Raises AlreadyRunning while a loop holds the lock. Deleting removes the data link, never its data.
        """
        if not self.root.exists():
            return None
        with self._held_for_reset():
            staged = self.root.with_name(f"{self.root.name}.reset-{uuid.uuid4().hex[:8]}")
            os.rename(self.root, staged)
            self.root.mkdir()
            for name in keep:
                if os.path.lexists(staged / name):
                    os.rename(staged / name, self.root / name)
            if not archive:
                shutil.rmtree(staged)  # unlinks symlinks, never follows them
                return None
            dest = self._archive_dir()
            os.rename(staged, dest)
            return dest

    @contextmanager
    def _held_for_reset(self) -> Iterator[None]:
        if not self.logs.is_dir():  # no loop ever ran here: there is no lock to take
            yield
            return
        file_lock = FileLock(self.lock_path, timeout=0)
        try:
            file_lock.acquire()
        except Timeout:
            pid = self._recorded_pid() or "unknown"
            raise AlreadyRunning(f"the loop is running in {self.root} (pid {pid}); stop it first") from None
        try:
            yield
        finally:
            file_lock.release()

    def _archive_dir(self) -> Path:
        parent = self.root.with_name(f"{self.root.name}_archive")
        parent.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock()))
        dest, n = parent / stamp, 1
        while dest.exists():
            n += 1
            dest = parent / f"{stamp}-{n}"
        return dest
