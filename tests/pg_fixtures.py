"""PostgreSQL fixtures: a throwaway local cluster and a running `agentexp server` (via pytest_plugins)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentexp import server

START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def skip_without_postgres() -> None:
    if not (server.PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 is not installed ({server.PG_BIN} has no initdb)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(server.PG_USER)
        except KeyError:
            pytest.skip(f"running as root and there is no '{server.PG_USER}' account to run PostgreSQL")


@contextlib.contextmanager
def reachable_dir() -> Iterator[Path]:
    """A folder the postgres account can enter: pytest's own tmp folders are private to root (mode 700)."""
    skip_without_postgres()
    root = Path(tempfile.mkdtemp(prefix="agentexp-pg-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_root() -> Iterator[Path]:
    with reachable_dir() as root:
        yield root


@pytest.fixture(scope="session")
def local_postgres() -> Iterator[server.LocalPostgres]:
    """One running local cluster per session (initdb takes seconds)."""
    with reachable_dir() as root:
        pg = server.LocalPostgres(root / "pg", free_port())
        pg.create()
        pg.start()
        try:
            yield pg
        finally:
            pg.stop()


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen
    log: Path
    artifacts: Path | None = None

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def clean_env() -> dict[str, str]:
    """The server's environment: none of the test's MLflow settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}


def start_server(args: list[str], folder: Path) -> Server:
    """`agentexp server ARGS` on a free port, once its /health answers."""
    port = free_port()
    log = folder / f"server-{port}.log"
    argv = [sys.executable, "-m", "agentexp", "server", "--port", str(port), *args]
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=folder, env=clean_env())
    found = Server(f"http://127.0.0.1:{port}", port, proc, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(found.url + "/health", timeout=2).status == 200:
                return found
        time.sleep(0.25)
    if proc.poll() is None:
        found.stop()
    pytest.fail(f"agentexp server did not come up:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def tracking_server(local_postgres, tmp_path_factory) -> Iterator[Server]:
    """`agentexp server` over the session's cluster, given the bare postgresql:// URI a user would type."""
    folder = tmp_path_factory.mktemp("server")
    bare = local_postgres.uri.replace(f"{server.PSYCOPG2}://", "postgresql://")
    args = ["--backend-store-uri", bare, "--artifact-root", str(folder / "artifacts")]
    running = start_server(args, folder)
    running.artifacts = folder / "artifacts"
    yield running
    running.stop()
