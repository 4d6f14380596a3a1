"""Fakes of what is outside the machine, at its boundary: a loopback LLM HTTP server and a `codex` script."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Respond = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]] | None]
"""(path, request body) -> (status, JSON body), or None to never answer."""

# What llama-cpp-python 0.3.36's server answers to `response_format: {"type": "json_schema"}`
# (seen from the real one): pydantic's literal error, as an HTTP 500.
LLAMA_CPP_REFUSAL = {
    "error": {
        "message": "1 validation error:\n  {'type': 'literal_error', "
        "'loc': ('body', 'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", "
        "'input': 'json_schema', "
        "'ctx': {'expected': \"'text' or 'json_object'\"}}\n\n  POST /v1/chat/completions",
        "type": "internal_server_error",
        "param": None,
        "code": None,
    }
}


@contextmanager
def fake_server(respond: Respond) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A loopback HTTP server; yields its URL and the requests it saw (path, body, lower-cased headers)."""
    seen: list[dict[str, Any]] = []
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            headers = {key.lower(): value for key, value in self.headers.items()}
            seen.append({"path": self.path, "body": body, "headers": headers})
            answer = respond(self.path, body)
            if answer is None:
                release.wait(30)
                return
            data = json.dumps(answer[1]).encode()
            self.send_response(answer[0])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def chat_completion(content: str) -> dict[str, Any]:
    """An OpenAI chat completion answering `content`."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "fake-local-model",
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
        ],
        "usage": {"prompt_tokens": 123, "completion_tokens": 45, "total_tokens": 168},
    }


def llama_cpp(content: str) -> Respond:
    """Like llama-cpp-python's server: refuses json_schema (HTTP 500), answers json_object and text.

    json_object with a schema attached crashed that server's grammar parser; here it is a 500 too.
    """

    def respond(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response_format = body.get("response_format") or {"type": "text"}
        if response_format["type"] == "json_schema":
            return 500, LLAMA_CPP_REFUSAL
        if response_format["type"] == "json_object" and "schema" in response_format:
            return 500, {"error": {"message": "grammar parser crashed", "type": "internal_server_error"}}
        return 200, chat_completion(content)

    return respond


def echo_key(key: str) -> Respond:
    """A server that rejects the key and quotes it whole in its 401, as some proxies do."""
    body = {"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error"}}
    return lambda path, _: (401, body)


FAKE_CODEX = """#!{python}
import json, os, subprocess, sys, time
argv = sys.argv[1:]
mode = os.environ.get("FAKE_CODEX_MODE", "answer")
prompt = sys.stdin.read()
flag = lambda name: argv[argv.index(name) + 1]
home = os.environ.get("CODEX_HOME")
record = {{"argv": argv, "prompt": prompt, "codex_home": home, "pid": os.getpid(),
          "schema": json.load(open(flag("--output-schema")))}}
if mode == "hang":
    record["child_pid"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]).pid
json.dump(record, open(os.environ["FAKE_CODEX_LOG"], "w"))
if mode == "hang":
    time.sleep(600)
if not home or not os.path.isdir(home):  # as the real codex: no CODEX_HOME folder, no run
    print(f"Error: CODEX_HOME points to {{home!r}}, but that path does not exist", file=sys.stderr)
    sys.exit(1)
if mode == "fail":
    print("starting codex", file=sys.stderr)
    print("Error: unexpected status 401 Unauthorized", file=sys.stderr)
    sys.exit(1)
open(flag("-o"), "w").write(os.environ["FAKE_CODEX_MESSAGE"])
print("a progress line that is not JSON")
for event in [
    {{"type": "thread.started", "thread_id": "t1"}},
    {{"type": "item.completed", "item": {{"type": "agent_message", "text": "ignored: -o wins"}}}},
    {{"type": "turn.completed", "usage": {{"input_tokens": 1200, "cached_input_tokens": 1000,
                                          "output_tokens": 80}}}},
]:
    print(json.dumps(event))
"""
"""A stand-in for the `codex` CLI; FAKE_CODEX_MODE picks answer, fail or hang (with a child process)."""
