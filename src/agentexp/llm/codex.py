"""Codex backend: `codex exec` in a read-only sandbox with an output schema and its own CODEX_HOME.

`llm.max_tokens` does not apply here: `codex exec` has no flag or config key that caps the answer's
tokens, so a call is bounded by `llm.timeout_s` (and a stop request) instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from agentexp.llm.base import (
    STOP_POLL_S,
    CodexConfig,
    LLMCancelled,
    LLMError,
    LLMRequest,
    LLMResponse,
    StopCheck,
    one_line,
)

INSTALL_HINT = "codex CLI not found: npm install -g @openai/codex"


def codex_home(cfg: CodexConfig, workspace_dir: Path) -> Path:
    """Where codex keeps its login for this workspace."""
    return Path(cfg.codex_home or Path(workspace_dir) / "codex_home").absolute()


def login_argv(cfg: CodexConfig, workspace_dir: Path) -> tuple[list[str], dict[str, str]]:
    """argv and environment for `codex login` into this workspace's CODEX_HOME (created if missing)."""
    home = codex_home(cfg, workspace_dir)
    home.mkdir(parents=True, exist_ok=True)
    return [cfg.binary, "login"], {**os.environ, "CODEX_HOME": str(home)}


# Strict structured output has no defaults (every field is required) and rejects string length bounds;
# the loop validates the answer with pydantic anyway.
_NOT_STRICT = {"default", "minLength", "maxLength"}


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema in the strict form codex's structured output demands: every property required, no extras."""
    return _strict(schema, schema.get("$defs", {}))


def _strict(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_strict(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref", "")
    if ref.startswith("#/$defs/") and len(node) > 1:  # strict mode allows no keywords beside $ref
        node = {**defs[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "$defs"):
            out[key] = {name: _strict(sub, defs) for name, sub in value.items()}
        elif key not in _NOT_STRICT:
            out[key] = _strict(value, defs)
    if "properties" in out:
        out["required"] = list(out["properties"])
        out["additionalProperties"] = False
    return out


def exec_argv(cfg: CodexConfig, binary: str, workspace_dir: Path, schema: Path, last: Path) -> list[str]:
    """The `codex exec` command line; the prompt goes to stdin."""
    argv = [binary, "exec", "-s", cfg.sandbox, "--skip-git-repo-check", "--ephemeral"]
    argv += ["-C", str(workspace_dir)]
    if cfg.model:
        argv += ["-m", cfg.model]
    if cfg.reasoning_effort:
        argv += ["-c", f'model_reasoning_effort="{cfg.reasoning_effort}"']
    if cfg.web_search:
        argv += ["-c", 'web_search="live"']
    return argv + ["--output-schema", str(schema), "-o", str(last), "--json", "-"]


def parse_events(stdout: str) -> list[dict[str, Any]]:
    """The JSON objects among codex's JSONL output; other lines are skipped."""
    events = []
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _count(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) else 0


def event_usage(events: list[dict[str, Any]]) -> tuple[int, int]:
    """(input, output) tokens summed over `turn.completed` events; cached input is part of input."""
    done = [e.get("usage") for e in events if e.get("type") == "turn.completed"]
    usages = [u for u in done if isinstance(u, dict)]
    return sum(_count(u, "input_tokens") for u in usages), sum(_count(u, "output_tokens") for u in usages)


def event_message(events: list[dict[str, Any]]) -> str:
    """Text of the last agent message in the events ('' if none)."""
    items = [e.get("item") for e in events if e.get("type") == "item.completed"]
    texts = [
        i["text"]
        for i in items
        if isinstance(i, dict) and i.get("type") == "agent_message" and isinstance(i.get("text"), str)
    ]
    return texts[-1] if texts else ""


def event_error(events: list[dict[str, Any]]) -> str:
    """Message of the last `error` or `turn.failed` event ('' if none)."""
    for event in reversed(events):
        if event.get("type") == "error":
            return str(event.get("message", ""))
        if event.get("type") == "turn.failed" and isinstance(event.get("error"), dict):
            return str(event["error"].get("message", ""))
    return ""


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill codex and everything it started (it runs in its own process group), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe:
            pipe.close()


def run_codex(
    argv: list[str], prompt: str, env: dict[str, str], timeout_s: float, should_stop: StopCheck | None = None
) -> tuple[int, str, str]:
    """Run codex with the prompt on stdin; (exit code, stdout, stderr).

    The process is polled, so that a timeout or a stop request kills its process group promptly.
    """
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise LLMError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
    deadline = time.monotonic() + timeout_s
    pending: str | None = prompt  # communicate() takes the input on its first call only
    try:
        while True:
            try:
                out, err = proc.communicate(pending, timeout=min(STOP_POLL_S, timeout_s))
                return proc.returncode, out, err
            except subprocess.TimeoutExpired:
                pending = None  # nothing is lost: a later communicate() goes on where this one stopped
            if should_stop is not None and should_stop():
                raise LLMCancelled("codex exec cancelled: a stop was requested")
            if time.monotonic() >= deadline:
                hint = "no network or not logged in? run `agentexp login`"
                raise LLMError(f"codex exec did not answer within {timeout_s:g}s ({hint})")
    except BaseException:
        _kill_group(proc)
        raise


class CodexBackend:
    """Asks `codex exec` for one answer matching the schema; the last message is returned verbatim."""

    def __init__(self, cfg: CodexConfig, workspace_dir: Path) -> None:
        self.cfg = cfg
        self.workspace_dir = Path(workspace_dir).absolute()
        self.home = codex_home(cfg, workspace_dir)

    def _preflight(self) -> str:
        """The codex executable; a clear error when it is missing or not logged in."""
        binary = shutil.which(self.cfg.binary)
        if binary is None:
            raise LLMError(INSTALL_HINT)
        if not (self.home / "auth.json").is_file() and not os.environ.get("CODEX_API_KEY"):
            raise LLMError(f"codex is not logged in (no auth.json in {self.home}): run `agentexp login`")
        return binary

    def _call(
        self, binary: str, request: LLMRequest, tmp: Path, should_stop: StopCheck | None
    ) -> tuple[str, list[dict[str, Any]]]:
        schema, last = tmp / "schema.json", tmp / "last_message.txt"
        schema.write_text(json.dumps(strict_schema(request.json_schema)), encoding="utf-8")
        argv = exec_argv(self.cfg, binary, self.workspace_dir, schema, last)
        env = {**os.environ, "CODEX_HOME": str(self.home)}
        self.home.mkdir(parents=True, exist_ok=True)  # codex exits 1 without it, even with CODEX_API_KEY
        code, out, err = run_codex(argv, request.prompt, env, self.cfg.timeout_s, should_stop)
        events = parse_events(out)
        if code != 0:
            lines = [line for line in err.splitlines() if line.strip()]
            reason = lines[-1] if lines else event_error(events) or "no error message"
            raise LLMError(f"codex exec failed (exit {code}): {one_line(reason)}")
        text = last.read_text(encoding="utf-8") if last.is_file() else ""
        return text or event_message(events), events

    def decide(self, request: LLMRequest, should_stop: StopCheck | None = None) -> LLMResponse:
        binary = self._preflight()
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="agentexp-codex-") as tmp:
            text, events = self._call(binary, request, Path(tmp), should_stop)
        if not text:
            raise LLMError("codex exec finished without a message")
        usage = self.cfg.usage(*event_usage(events))
        model = self.cfg.model or "codex-default"
        return LLMResponse(raw=text, usage=usage, latency_s=time.monotonic() - start, model=model)
