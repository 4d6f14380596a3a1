"""The shared TODO queue: artifacts/shared_todo.json (source of truth) rendered to shared_todo.md."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agentexp.files import atomic_write_text, flatten

TodoSource = Literal["worker", "mentor"]


class TodoItem(BaseModel):
    """One TODO; its text is data for the agents to read, never an instruction to agentexp."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    id: int
    """Monotonic id, never reused."""
    text: str
    """One line, at most `TodoLimits.max_chars` characters."""
    source: TodoSource
    """Who asked for it."""
    created_cycle: int
    """Cycle that added it."""
    resolved: bool = False
    """True once an agent marked it done."""


class TodoLimits(BaseModel):
    """How much the queue accepts; caps tighten as the backlog grows."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    max_open: int = 20
    """Hard cap on unresolved items."""
    max_chars: int = 300
    """Longer texts are cut to this length."""
    worker_tiers: list[tuple[int, int]] = [(5, 2), (10, 1)]
    """(open items below, new worker items accepted per call); none beyond the last tier."""
    mentor_per_call: int = 1
    """Mentor items accepted per call while under `max_open` (a challenge is rarer and worth a slot)."""


class TodoFile(BaseModel):
    """The JSON sidecar's content."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    next_id: int = 1
    """Id the next item gets."""
    items: list[TodoItem] = Field(default_factory=list)
    """Every item, resolved ones included, in id order."""


def _key(text: str) -> str:
    return flatten(text).casefold()


_parsed: dict[Path, tuple[tuple[int, int, int], TodoFile]] = {}
"""Per queue file, its last parse and the (inode, mtime, size) it had: every cycle reads the queue (for the
signals and the prompt) and few change it, so an unchanged file is not parsed again."""


class TodoQueue:
    """Reads and writes the shared TODO queue under a workspace's artifacts/ folder."""

    def __init__(self, artifacts: Path, limits: TodoLimits | None = None) -> None:
        self.json_path = Path(artifacts) / "shared_todo.json"
        self.md_path = Path(artifacts) / "shared_todo.md"
        self.limits = limits or TodoLimits()

    def load(self) -> TodoFile:
        """Current queue (empty when there is no file yet), freshly read: the caller may change it."""
        if not self.json_path.exists():
            return TodoFile()
        return TodoFile.model_validate_json(self.json_path.read_text(encoding="utf-8"))

    def _current(self) -> TodoFile:
        """Current queue, parsed again only when the file changed: shared, never to be changed."""
        try:
            stat = self.json_path.stat()
        except FileNotFoundError:
            return TodoFile()
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = _parsed.get(self.json_path)
        if cached is None or cached[0] != seen:
            cached = _parsed[self.json_path] = (seen, self.load())
        return cached[1]

    def accept_budget(self, open_count: int, source: TodoSource) -> int:
        """How many new items one call from `source` may add with `open_count` items open."""
        room = max(0, self.limits.max_open - open_count)
        if source == "mentor":
            return min(room, self.limits.mentor_per_call)
        per_call = next((n for below, n in self.limits.worker_tiers if open_count < below), 0)
        return min(room, per_call)

    def add(self, texts: list[str], source: TodoSource, cycle: int) -> list[int]:
        """Add new, non-duplicate items within the caps; return their ids."""
        queue = self.load()
        open_keys = {_key(item.text) for item in queue.items if not item.resolved}
        budget = self.accept_budget(len(open_keys), source)
        added: list[int] = []
        for raw in texts:
            text = flatten(raw)[: self.limits.max_chars]
            if len(added) >= budget or not text or _key(text) in open_keys:
                continue
            queue.items.append(TodoItem(id=queue.next_id, text=text, source=source, created_cycle=cycle))
            open_keys.add(_key(text))
            added.append(queue.next_id)
            queue.next_id += 1
        if added:
            self._save(queue)
        return added

    def resolve(self, ids: list[int]) -> list[int]:
        """Mark open items done; unknown or already resolved ids are ignored. Returns the ids resolved."""
        queue = self.load()
        done = [item.id for item in queue.items if item.id in set(ids) and not item.resolved]
        for item in queue.items:
            item.resolved = item.resolved or item.id in done
        if done:
            self._save(queue)
        return done

    def open_items(self) -> list[TodoItem]:
        """Unresolved items, oldest first."""
        return [item.model_copy() for item in self._current().items if not item.resolved]

    def focus(self, n: int = 1) -> list[TodoItem]:
        """The `n` oldest and `n` newest unresolved items, without repeats (what the prompt shows)."""
        items = self.open_items()
        if n <= 0:
            return []
        chosen = {item.id: item for item in items[:n] + items[-n:]}
        return sorted(chosen.values(), key=lambda item: item.id)

    def _save(self, queue: TodoFile) -> None:
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.json_path, queue.model_dump_json(indent=2))
        atomic_write_text(self.md_path, render(queue))


def render(queue: TodoFile) -> str:
    """Markdown view: open items first, then resolved ones."""
    lines = ["# Shared TODO", "", "## Open"]
    lines += [_line(item) for item in queue.items if not item.resolved] or ["(none)"]
    lines += ["", "## Resolved"]
    lines += [_line(item) for item in queue.items if item.resolved] or ["(none)"]
    return "\n".join(lines) + "\n"


def _line(item: TodoItem) -> str:
    box = "x" if item.resolved else " "
    return f"- [{box}] #{item.id} ({item.source}, cycle {item.created_cycle}) {item.text}"
