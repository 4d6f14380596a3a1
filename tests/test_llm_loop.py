"""The loop on an OpenAI-compatible server faked at the HTTP boundary: llama.cpp's quirks, an echoed key."""

from __future__ import annotations

from pathlib import Path

from fake_llm_server import echo_key, fake_server, llama_cpp
from helpers import FAST_TRAINING, decision

from agentexp.cli import build_loop
from agentexp.config import compose_loop


def run_openai_loop(tmp_path: Path, url: str, *extra: str) -> str:
    overrides = [
        "llm=openai",
        f"llm.base_url={url}/v1",
        "mentor.enabled=false",
        f"loop.workspace={tmp_path / '.llm_loop'}",
        "loop.poll_seconds=0",
        "loop.max_cycles=1",
        FAST_TRAINING,
        *extra,
    ]
    return build_loop(compose_loop(overrides)).run()


def test_a_loop_driven_by_a_llama_cpp_like_server_trains(tmp_path, store, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with fake_server(llama_cpp(decision())) as (url, seen):
        assert run_openai_loop(tmp_path, url) == "max_cycles"
    assert [call["body"]["response_format"]["type"] for call in seen] == ["json_schema", "json_object"]
    assert all(call["body"]["max_tokens"] == 2048 for call in seen)
    (run,) = store.runs("decision")
    assert run.data.params["action"] == "train" and run.data.metrics["input_tokens"] == 123
    (train,) = store.runs("train")
    assert train.info.status == "FINISHED" and train.data.params["optim.lr"] == "0.002"


def test_a_key_echoed_by_the_server_is_stored_nowhere(tmp_path, store, monkeypatch):
    key = "sk-proj-" + "Q7w8E9r0T1" * 4
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with fake_server(echo_key(key)) as (url, seen):
        assert run_openai_loop(tmp_path, url, "llm.retry.backoff_s=0") == "max_cycles"
    assert seen and seen[0]["headers"]["authorization"] == f"Bearer {key}"
    (run,) = store.runs("decision")
    assert run.data.params["action"] == "wait" and "HTTP 401" in run.data.tags["agentexp.worker_error"]
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert leaks == []
