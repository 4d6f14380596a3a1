"""Small file primitives: replace a file atomically, read a file's tail, keep text one line or inert."""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

_HEADING_RE = re.compile(r"^\s*#{1,6}\s")


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    """Replace `path` with `text` so readers see the old or the new file, never a partial one.

    durable=False skips the fsync: still atomic for readers, but a power cut may lose the new content.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def flatten(text: str) -> str:
    """One line: newlines and runs of whitespace become single spaces."""
    return " ".join(text.split())


def escape_headings(text: str) -> str:
    # Entry text is data: a line like "## Notes" inside it must not open a section.
    return "\n".join("\\" + line if _HEADING_RE.match(line) else line for line in text.splitlines())


def finite(value: Any) -> Any:
    """JSON-safe copy: NaN/inf become None (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def tail(path: Path, chars: int) -> str:
    """Last `chars` characters of a text file without reading all of it."""
    if chars <= 0 or not path.exists():
        return ""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - 4 * chars))  # utf-8 is at most 4 bytes per character
        text = handle.read().decode("utf-8", errors="ignore")
    return text[-chars:]
