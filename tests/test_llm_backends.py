"""LLM backends against local fakes at the HTTP and process boundary, and the scripted replay."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from fake_llm_server import FAKE_CODEX, chat_completion, echo_key, fake_server, llama_cpp
from pydantic import BaseModel, ValidationError

from agentexp.agents import ask
from agentexp.decisions import WorkerDecision, json_schema
from agentexp.llm import (
    LLMCancelled,
    LLMError,
    LLMRequest,
    RetryPolicy,
    ScriptExhausted,
    build_backend,
    parse_llm_config,
)
from agentexp.redact import RedactingFilter

CONF_LLM = Path(__file__).resolve().parents[1] / "conf" / "llm"


class Answer(BaseModel):
    action: str
    note: str | None = None
    tags: list[str] = []


SCHEMA = Answer.model_json_schema()
REQUEST = LLMRequest(role="worker", prompt="Decide the next experiment.", json_schema=SCHEMA, context={})
CONTENT = '{"action": "wait", "note": "hello\\nworld"}'


# ---------------------------------------------------------------- OpenAI chat completions protocol


def openai_backend(base_url: str, **overrides: Any):
    cfg = parse_llm_config({"name": "openai", "model": "fake-local-model", "base_url": base_url, **overrides})
    return build_backend(cfg, Path("."))


def test_openai_returns_content_verbatim_with_server_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with fake_server(lambda path, body: (200, chat_completion(CONTENT))) as (url, seen):
        backend = openai_backend(f"{url}/v1", input_cost_per_mtok=2.0, output_cost_per_mtok=8.0)
        response = backend.decide(REQUEST)
    assert response.raw == CONTENT
    assert (response.usage.input_tokens, response.usage.output_tokens) == (123, 45)
    assert response.usage.cost_usd == pytest.approx((123 * 2.0 + 45 * 8.0) / 1e6)
    assert response.model == "fake-local-model"
    [call] = seen
    assert call["path"] == "/v1/chat/completions"
    assert call["headers"]["authorization"] == "Bearer not-needed"
    assert call["body"]["response_format"]["json_schema"]["schema"] == SCHEMA
    assert call["body"]["messages"][-1] == {"role": "user", "content": REQUEST.prompt}


def test_openai_without_key_or_base_url_says_which_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LLMError, match="OPENAI_API_KEY"):
        build_backend(parse_llm_config({"name": "openai"}), Path("."))


def test_openai_server_that_never_answers_times_out() -> None:
    with fake_server(lambda path, body: None) as (url, _):
        backend = openai_backend(f"{url}/v1", timeout_s=1)
        start = time.monotonic()
        with pytest.raises(LLMError) as err:
            backend.decide(REQUEST)
    assert time.monotonic() - start < 5
    assert str(err.value) == f"openai backend: no answer from {url}/v1 within 1s"


@pytest.mark.parametrize("status", [401, 500])
def test_openai_http_error_is_one_line(status: int) -> None:
    body = {"error": {"message": "Incorrect API key\nprovided", "type": "invalid_request_error"}}
    with fake_server(lambda path, _: (status, body)) as (url, _), pytest.raises(LLMError) as err:
        openai_backend(f"{url}/v1").decide(REQUEST)
    message = str(err.value)
    assert "\n" not in message
    assert f"HTTP {status}" in message and "Incorrect API key provided" in message
    assert ("OPENAI_API_KEY" in message) == (status == 401)


WAIT = json.dumps({"action": "wait", "rationale": "the run is still training", "monitor_seconds": 30})
WORKER_REQUEST = LLMRequest(
    role="worker", prompt="Decide.", json_schema=json_schema(WorkerDecision), context={}
)


def formats(seen: list[dict[str, Any]]) -> list[str]:
    return [(call["body"].get("response_format") or {"type": "none"})["type"] for call in seen]


def test_openai_on_a_llama_cpp_server_falls_back_to_json_object_and_remembers() -> None:
    with fake_server(llama_cpp(WAIT)) as (url, seen):
        decision, calls, error = ask(
            openai_backend(f"{url}/v1"), WORKER_REQUEST, WorkerDecision, max_reasks=0
        )
        assert error is None and decision == WorkerDecision.model_validate_json(WAIT) and len(calls) == 1
        assert formats(seen) == ["json_schema", "json_object"]
        json_object = seen[1]["body"]
        assert json_object["response_format"] == {"type": "json_object"}  # no schema: it crashed llama.cpp
        assert json.dumps(WORKER_REQUEST.json_schema) in json_object["messages"][0]["content"]
        # a second backend on the same server (the mentor's) asks in json_object straight away
        openai_backend(f"{url}/v1").decide(WORKER_REQUEST)
    assert formats(seen) == ["json_schema", "json_object", "json_object"]


def test_openai_falls_back_to_text_when_json_object_is_refused_too() -> None:
    def respond(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "response_format" in body:
            return 400, {"error": {"message": "unsupported response_format"}}
        return 200, chat_completion(WAIT)

    with fake_server(respond) as (url, seen):
        assert openai_backend(f"{url}/v1").decide(WORKER_REQUEST).raw == WAIT
    assert formats(seen) == ["json_schema", "json_object", "none"]
    assert json.dumps(WORKER_REQUEST.json_schema) in seen[-1]["body"]["messages"][0]["content"]


def http_error(status: int, message: str):
    return lambda path, body: (status, {"error": {"message": message}})


@pytest.mark.parametrize("mode", ["json_schema", "json_object", "text"])
def test_openai_fixed_mode_is_never_negotiated(mode: str) -> None:
    with fake_server(http_error(500, "response_format refused")) as (url, seen), pytest.raises(LLMError):
        openai_backend(f"{url}/v1", structured_output=mode).decide(REQUEST)
    assert formats(seen) == [{"text": "none"}.get(mode, mode)]


def test_openai_error_about_something_else_is_not_a_refusal() -> None:
    with fake_server(http_error(500, "out of memory")) as (url, seen), pytest.raises(LLMError) as err:
        openai_backend(f"{url}/v1").decide(REQUEST)
    assert formats(seen) == ["json_schema"] and "HTTP 500" in str(err.value)


def test_openai_sends_max_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    with fake_server(lambda path, body: (200, chat_completion(CONTENT))) as (url, seen):
        openai_backend(f"{url}/v1").decide(REQUEST)
        openai_backend(f"{url}/v1", max_tokens=77).decide(REQUEST)
    assert [call["body"]["max_tokens"] for call in seen] == [2048, 77]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    official = build_backend(parse_llm_config({"name": "openai", "max_tokens": 99}), Path("."))
    params = official.params(REQUEST, "json_schema")  # api.openai.com's reasoning models need this name
    assert params["max_completion_tokens"] == 99 and "max_tokens" not in params


KEYS = [
    ("OPENAI_API_KEY", "sk-proj-" + "a1B2c3D4e5" * 4),  # token-shaped
    ("LOCAL_LLM", "plain-words-but-secret"),  # shaped like nothing: known only as the configured env var
]


@pytest.mark.parametrize(("env_var", "key"), KEYS)
def test_a_key_echoed_in_a_401_is_nowhere_in_errors_records_or_logs(
    env_var: str, key: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(env_var, key)
    caplog.set_level(logging.DEBUG)
    caplog.handler.addFilter(RedactingFilter())  # as the CLI's handlers do; the SDKs log at DEBUG
    with fake_server(echo_key(key)) as (url, seen):
        backend = openai_backend(f"{url}/v1", api_key_env=env_var)
        with pytest.raises(LLMError) as err:
            backend.decide(REQUEST)
        _, calls, error = ask(backend, REQUEST, WorkerDecision, 0, retry=RetryPolicy(retries=1, backoff_s=0))
        logging.getLogger("agentexp.test").warning(
            "the server said: %s", f"Incorrect API key provided: {key}"
        )
    assert seen[0]["headers"]["authorization"] == f"Bearer {key}"  # the key was really sent
    assert "HTTP 401" in str(err.value) and "[REDACTED]" in str(err.value)
    assert len(calls) == 2 and "[REDACTED]" in error
    stored = [str(err.value), error, *(call.model_dump_json() for call in calls), caplog.text]
    assert not [text for text in stored if key in text]
    assert "the server said: Incorrect API key provided: [REDACTED]" in caplog.text


def slow_stop(after_s: float = 0.5):
    """A should_stop that turns true `after_s` seconds from now."""
    deadline = time.monotonic() + after_s
    return lambda: time.monotonic() >= deadline


# ---------------------------------------------------------------- Anthropic messages protocol


def anthropic_message(content: str) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-fake",
        "content": [{"type": "text", "text": content}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 321, "output_tokens": 54},
    }


def anthropic_backend(base_url: str, **overrides: Any):
    cfg = parse_llm_config({"name": "anthropic", "model": "claude-fake", "base_url": base_url, **overrides})
    return build_backend(cfg, Path("."))


def test_anthropic_returns_text_verbatim_with_server_usage() -> None:
    with fake_server(lambda path, body: (200, anthropic_message(CONTENT))) as (url, seen):
        response = anthropic_backend(url, input_cost_per_mtok=3.0, output_cost_per_mtok=15.0).decide(REQUEST)
    assert response.raw == CONTENT
    assert (response.usage.input_tokens, response.usage.output_tokens) == (321, 54)
    assert response.usage.cost_usd == pytest.approx((321 * 3.0 + 54 * 15.0) / 1e6)
    [call] = seen
    assert call["path"] == "/v1/messages"
    assert json.dumps(SCHEMA) in call["body"]["system"]
    assert call["body"]["messages"] == [{"role": "user", "content": REQUEST.prompt}]


def test_anthropic_server_that_never_answers_times_out() -> None:
    with fake_server(lambda path, body: None) as (url, _):
        backend = anthropic_backend(url, timeout_s=1)
        start = time.monotonic()
        with pytest.raises(LLMError, match=r"^anthropic backend: no answer from .* within 1s$"):
            backend.decide(REQUEST)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("status", [401, 500])
def test_anthropic_http_error_is_one_line(status: int) -> None:
    body = {"type": "error", "error": {"type": "api_error", "message": "bad\nthings"}}
    with fake_server(lambda path, _: (status, body)) as (url, _), pytest.raises(LLMError) as err:
        anthropic_backend(url).decide(REQUEST)
    assert "\n" not in str(err.value)
    assert f"HTTP {status}" in str(err.value)


def test_anthropic_sends_max_tokens() -> None:
    with fake_server(lambda path, body: (200, anthropic_message(CONTENT))) as (url, seen):
        anthropic_backend(url, max_tokens=321).decide(REQUEST)
    assert seen[0]["body"]["max_tokens"] == 321


@pytest.mark.parametrize(
    "make",
    [lambda url: openai_backend(f"{url}/v1", timeout_s=30), lambda url: anthropic_backend(url, timeout_s=30)],
    ids=["openai", "anthropic"],
)
def test_a_stop_cancels_an_http_call_in_flight(make) -> None:
    with fake_server(lambda path, body: None) as (url, seen):
        backend = make(url)
        start = time.monotonic()
        with pytest.raises(LLMCancelled, match="a stop was requested"):
            backend.decide(REQUEST, should_stop=slow_stop())
        assert 0.4 < time.monotonic() - start < 2
        assert len(seen) == 1


# ---------------------------------------------------------------- codex exec at the process boundary


@pytest.fixture
def codex_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A fake `codex` first on PATH and a logged-in workspace."""
    bin_dir, workspace = tmp_path / "bin", tmp_path / "workspace"
    bin_dir.mkdir()
    (workspace / "codex_home").mkdir(parents=True)
    (workspace / "codex_home" / "auth.json").write_text("{}")
    fake = bin_dir / "codex"
    fake.write_text(FAKE_CODEX.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "codex_call.json"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CODEX_LOG", str(log))
    monkeypatch.setenv("FAKE_CODEX_MESSAGE", CONTENT)
    monkeypatch.delenv("CODEX_API_KEY", raising=False)
    return {"workspace": workspace, "log": log, "bin": bin_dir}


def codex_backend(workspace: Path, **overrides: Any):
    return build_backend(parse_llm_config({"name": "codex", **overrides}), workspace)


def test_codex_returns_last_message_and_usage(codex_env: dict[str, Path]) -> None:
    workspace = codex_env["workspace"]
    backend = codex_backend(workspace, model="gpt-fake", reasoning_effort="high", output_cost_per_mtok=10.0)
    response = backend.decide(REQUEST)
    assert response.raw == CONTENT
    assert (response.usage.input_tokens, response.usage.output_tokens) == (1200, 80)
    assert response.usage.cost_usd == pytest.approx(80 * 10.0 / 1e6)
    call = json.loads(codex_env["log"].read_text())
    argv = call["argv"]
    assert argv[0] == "exec" and argv[-1] == "-" and "--json" in argv
    assert argv[argv.index("-s") + 1] == "read-only"
    assert {"--skip-git-repo-check", "--ephemeral"} <= set(argv)
    assert argv[argv.index("-C") + 1] == str(workspace.absolute())
    assert argv[argv.index("-m") + 1] == "gpt-fake"
    assert argv[argv.index("-c") + 1] == 'model_reasoning_effort="high"'
    assert call["prompt"] == REQUEST.prompt
    assert call["codex_home"] == str((workspace / "codex_home").absolute())
    # codex's structured output is strict: every property required, no extra keys, no defaults
    assert call["schema"]["required"] == ["action", "note", "tags"]
    assert call["schema"]["additionalProperties"] is False
    assert "default" not in json.dumps(call["schema"])


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_codex_that_never_answers_is_killed_with_its_children(
    codex_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CODEX_MODE", "hang")
    backend = codex_backend(codex_env["workspace"], timeout_s=1)
    start = time.monotonic()
    with pytest.raises(LLMError, match=r"codex exec did not answer within 1s .*agentexp login"):
        backend.decide(REQUEST)
    assert time.monotonic() - start < 5
    call = json.loads(codex_env["log"].read_text())
    deadline = time.monotonic() + 3
    while not (_gone(call["pid"]) and _gone(call["child_pid"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(call["pid"]) and _gone(call["child_pid"])


def test_a_stop_kills_codex_and_its_process_group_promptly(
    codex_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CODEX_MODE", "hang")
    backend = codex_backend(codex_env["workspace"], timeout_s=60)
    start = time.monotonic()
    with pytest.raises(LLMCancelled, match="a stop was requested"):
        backend.decide(REQUEST, should_stop=slow_stop())
    assert time.monotonic() - start < 2
    call = json.loads(codex_env["log"].read_text())
    assert _gone(call["pid"]) and _gone(call["child_pid"])


def test_codex_with_an_api_key_and_no_login_creates_codex_home(
    codex_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    home = codex_env["workspace"] / "codex_home"
    (home / "auth.json").unlink()
    home.rmdir()
    monkeypatch.setenv("CODEX_API_KEY", "sk-codex-" + "x1" * 12)
    assert codex_backend(codex_env["workspace"]).decide(REQUEST).raw == CONTENT
    assert home.is_dir()


def test_codex_failure_reports_last_stderr_line(
    codex_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CODEX_MODE", "fail")
    with pytest.raises(LLMError, match=r"^codex exec failed \(exit 1\): Error: unexpected status 401"):
        codex_backend(codex_env["workspace"]).decide(REQUEST)


def test_codex_missing_binary(codex_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(codex_env["workspace"]))
    with pytest.raises(LLMError, match=r"^codex CLI not found: npm install -g @openai/codex$"):
        codex_backend(codex_env["workspace"]).decide(REQUEST)


def test_codex_not_logged_in_points_to_login(codex_env: dict[str, Path]) -> None:
    (codex_env["workspace"] / "codex_home" / "auth.json").unlink()
    with pytest.raises(LLMError, match="agentexp login"):
        codex_backend(codex_env["workspace"]).decide(REQUEST)
    assert not codex_env["log"].exists()  # codex was never started


def test_codex_login_argv_uses_the_workspace_codex_home(tmp_path: Path) -> None:
    from agentexp.llm.codex import login_argv

    argv, env = login_argv(parse_llm_config({"name": "codex"}), tmp_path)
    assert argv == ["codex", "login"]
    assert env["CODEX_HOME"] == str(tmp_path / "codex_home") and (tmp_path / "codex_home").is_dir()


# ---------------------------------------------------------------- scripted replay


def write_script(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def scripted(script: Path, **overrides: Any):
    cfg = parse_llm_config({"name": "scripted", "script": str(script), **overrides})
    return build_backend(cfg, Path("."))


def test_scripted_replays_raw_verbatim_one_line_per_call(tmp_path: Path) -> None:
    script = write_script(
        tmp_path / "s.jsonl",
        [
            json.dumps(
                {
                    "raw": "not json at all",
                    "note": "ignored",
                    "usage": {"input_tokens": 10, "output_tokens": 2},
                }
            ),
            "",
            json.dumps({"raw": CONTENT}),
        ],
    )
    backend = scripted(script, input_cost_per_mtok=1.0)
    first, second = backend.decide(REQUEST), backend.decide(REQUEST)  # a re-ask consumes a line too
    assert (first.raw, second.raw) == ("not json at all", CONTENT)
    assert (first.usage.input_tokens, first.usage.output_tokens) == (10, 2)
    assert first.usage.cost_usd == pytest.approx(10 / 1e6)
    assert second.usage.input_tokens == second.usage.output_tokens == 0
    with pytest.raises(ScriptExhausted, match=r"exhausted after 2 responses"):
        backend.decide(REQUEST)


@pytest.mark.parametrize("bad", ["{not json", json.dumps({"text": "no raw"}), json.dumps(["raw"])])
def test_scripted_malformed_line_names_its_number(tmp_path: Path, bad: str) -> None:
    script = write_script(tmp_path / "s.jsonl", [json.dumps({"raw": "{}"}), bad])
    with pytest.raises(LLMError, match=r"line 2"):
        scripted(script)


def test_scripted_missing_script_is_clear(tmp_path: Path) -> None:
    with pytest.raises(LLMError, match="cannot read script"):
        scripted(tmp_path / "missing.jsonl")


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("path", sorted(CONF_LLM.glob("*.yaml")), ids=lambda p: p.stem)
def test_llm_group_configs_validate(path: Path, tmp_path: Path) -> None:
    values = yaml.safe_load(path.read_text())
    if values.get("script") == "???":
        values["script"] = str(tmp_path / "script.jsonl")
    assert parse_llm_config(values).name == path.stem


def test_llm_config_rejects_unknown_keys_and_backends() -> None:
    with pytest.raises(ValidationError):
        parse_llm_config({"name": "openai", "base_ulr": "http://x"})
    with pytest.raises(ValidationError):
        parse_llm_config({"name": "gemini"})
