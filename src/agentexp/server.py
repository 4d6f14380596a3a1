"""`agentexp server`: a shared MLflow tracking server on PostgreSQL (a local cluster, or the user's)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy
from sqlalchemy.engine import make_url

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
"""The account a local cluster runs as when we are root (PostgreSQL refuses to run as root)."""
DATABASE = "mlflow"
PSYCOPG2 = "postgresql+psycopg2"


class ServerError(Exception):
    """A problem the user can fix, told in one sentence."""


def normalise_uri(uri: str) -> str:
    """A PostgreSQL URI with the psycopg2 driver: a bare postgresql:// makes SQLAlchemy look for psycopg 3."""
    scheme, sep, rest = uri.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        return f"{PSYCOPG2}://{rest}"
    if sep and scheme.startswith("postgresql+"):
        return uri
    raise ServerError(f"--backend-store-uri must be a postgresql:// URI, got {_masked(uri)!r}")


def check_port(host: str, port: int) -> None:
    """A taken port is one sentence here, not uvicorn's error after MLflow has started."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no bar
        try:
            sock.bind((host, port))
        except OSError as err:
            reason = f"cannot listen on {host}:{port} ({err.strerror}); choose another --port"
            raise ServerError(reason) from None


def check_database(uri: str) -> None:
    """Connect once, so a wrong URI is one sentence here instead of MLflow's retries and traceback."""
    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 5})
        with engine.connect():
            pass
        engine.dispose()
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise ServerError(f"cannot connect to PostgreSQL at {_masked(uri)}: {reason}") from None


def _masked(uri: str) -> str:
    try:
        return make_url(uri).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return uri.split("@")[-1]


@dataclass
class LocalPostgres:
    """A PostgreSQL cluster in a folder of the project, listening on 127.0.0.1 only, with a password."""

    root: Path
    port: int = 5433
    bin_dir: Path = PG_BIN

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def uri(self) -> str:
        password = (self.root / "password").read_text().strip()
        return f"{PSYCOPG2}://{PG_USER}:{password}@127.0.0.1:{self.port}/{DATABASE}"

    def create(self) -> None:
        """initdb on first use; the password file lets only this project's user in (scram, not trust)."""
        if (self.data / "PG_VERSION").exists():
            return
        if not (self.bin_dir / "initdb").exists():
            raise ServerError(
                f"PostgreSQL is not installed (no {self.bin_dir / 'initdb'}): "
                "apt-get install postgresql-15, or give --backend-store-uri"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        password = self.root / "password"
        password.write_text(secrets.token_urlsafe(24) + "\n")
        password.chmod(0o600)
        self._hand_over(self.root, password)
        self._pg("initdb", "-D", self.data, "-U", PG_USER, "--auth=scram-sha-256", f"--pwfile={password}")
        with (self.data / "postgresql.conf").open("a") as conf:
            # TCP on loopback only; no unix socket, whose path would be limited to ~100 characters.
            conf.write("listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n")

    def running(self) -> bool:
        return self._pg("pg_ctl", "status", "-D", self.data, check=False).returncode == 0

    def start(self) -> None:
        log = self.root / "postgres.log"
        port = f"-p {self.port}"
        done = self._pg("pg_ctl", "start", "-w", "-D", self.data, "-l", log, "-o", port, check=False)
        if done.returncode != 0:
            last = log.read_text().strip().splitlines()[-1:] if log.exists() else [done.stdout.strip()]
            raise ServerError(f"the local PostgreSQL in {self.data} did not start: {' '.join(last)}")
        self._create_database()

    def stop(self) -> None:
        self._pg("pg_ctl", "stop", "-w", "-m", "fast", "-D", self.data, check=False)

    def _create_database(self) -> None:
        admin = make_url(self.uri).set(database="postgres")
        engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            query = sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name")
            if conn.execute(query, {"name": DATABASE}).first() is None:
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{DATABASE}"'))
        engine.dispose()

    def _hand_over(self, *paths: Path) -> None:
        """As root, give the cluster's files to the postgres account and check it can reach them."""
        if os.geteuid() != 0:
            return
        for path in paths:
            shutil.chown(path, PG_USER, PG_USER)
        self.root.chmod(0o700)
        if self._pg("test", "-w", self.root, check=False, binary=False).returncode != 0:
            raise ServerError(
                f"PostgreSQL runs as user {PG_USER}, who cannot enter {self.root}; "
                "choose --pg-dir in a folder it can reach, or give --backend-store-uri"
            )

    def _pg(self, tool: str, *args: object, check: bool = True, binary: bool = True):
        argv = [str(self.bin_dir / tool) if binary else tool, *map(str, args)]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", PG_USER, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise ServerError(f"{tool} failed: {(done.stderr or done.stdout).strip().splitlines()[-1]}")
        return done


FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""SIGHUP too: a closed terminal would otherwise end us and leave the server running in its own session."""


def run_forwarding(argv: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run argv in its own process group and pass our stop signals on to the whole group; its exit status.

    `mlflow server` runs uvicorn as a child: signalling only mlflow would leave uvicorn listening.
    """
    proc = subprocess.Popen(list(argv), env=env, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        _signal_group(proc.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _signal_group(proc.pid, signal.SIGKILL)  # whatever the group leader left behind
    return 128 - code if code < 0 else code


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def run_mlflow_server(store: str, host: str, port: int, *extra: str) -> int:
    """`mlflow server` in the foreground; the store goes in the environment, so no password shows in ps."""
    env = os.environ | {
        "MLFLOW_BACKEND_STORE_URI": store,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # the job runner spawns many processes
    }
    argv = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]
    return run_forwarding([*argv, *extra], env)


def serve(
    host: str,
    port: int,
    artifacts: Path,
    backend_store_uri: str | None,
    pg: LocalPostgres,
    echo: Callable[[str], object],
) -> int:
    """The store (the local cluster unless a URI is given), then mlflow server over it until it is stopped.

    A local cluster started here stops with the server.
    """
    from agentexp import tracking

    check_port(host, port)
    store = normalise_uri(backend_store_uri) if backend_store_uri else None
    started = False
    try:
        if store is None:
            pg.create()
            started = not pg.running()
            if started:
                pg.start()
            store = pg.uri
        check_database(store)
        artifacts.mkdir(parents=True, exist_ok=True)
        echo(f"MLflow on {_masked(store)}, artifacts in {artifacts.resolve()}")
        echo(f"UI: http://{host}:{port}  (export MLFLOW_TRACKING_URI=http://{host}:{port})")
        for name, experiment_id in tracking.experiments(store).items():
            echo(f"{name}: {tracking.runs_page(experiment_id, port, host)}")
        return run_mlflow_server(store, host, port, "--artifacts-destination", artifacts.resolve().as_uri())
    finally:
        if started:
            pg.stop()
