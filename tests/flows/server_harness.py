"""A throwaway PostgreSQL cluster, a Prefect server on it, and headless Chromium.

In: a scratch folder. Out: running processes (stopped by the context managers) and
their URLs: ``postgresql+asyncpg://...`` for the database, ``http://127.0.0.1:PORT``
for the Prefect server and its UI; a screenshot and the rendered DOM of a UI page.

Used by the ``server`` tests; ``scripts/start_local_server.sh`` does the same by hand.
PostgreSQL refuses to run as root, so as root the cluster is created and run as the
``postgres`` user (``runuser``); both bind 127.0.0.1 only, on free ports.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def postgres_bin_dir() -> Path | None:
    """The folder holding ``initdb``/``pg_ctl``/``postgres`` (Debian's layout first), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("postgres")
    return Path(found).parent if found else None


def chromium_binary() -> str | None:
    """The path of Debian's ``chromium`` (or ``chromium-browser``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing_server_dependencies() -> str | None:
    """Why the server tests cannot run here, or None when everything is installed."""
    missing = []
    if postgres_bin_dir() is None:
        missing.append("postgresql")
    if chromium_binary() is None:
        missing.append("chromium")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        missing.append("runuser (to run postgres as a non-root user)")
    if missing:
        return f"{', '.join(missing)} not installed (run scripts/install_system_deps.sh)"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres_user(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@dataclass(frozen=True)
class Postgres:
    """A running throwaway cluster: where it listens and the Prefect database URL."""

    data_dir: Path
    port: int
    database: str
    user: str

    @property
    def async_url(self) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/{self.database}"


@contextlib.contextmanager
def running_postgres(database: str = "prefect", timeout_s: float = 60.0) -> Iterator[Postgres]:
    """Create a cluster under a fresh temp folder, start it, yield it, stop and delete it.

    Authentication is ``trust`` and the server listens on 127.0.0.1 only: it is a
    test database that lives for one test session.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("postgres binaries not found; run scripts/install_system_deps.sh")
    # The folder must be reachable by the postgres user, so not under pytest's 0700 tmp.
    root = Path(tempfile.mkdtemp(prefix="pairforge-pg-"))
    data_dir = root / "data"
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    if os.geteuid() == 0:
        shutil.chown(root, user="postgres", group="postgres")
    port = free_port()
    log_file = root / "postgres.log"
    try:
        subprocess.run(
            _as_postgres_user(
                [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"]
            ),
            check=True,
            capture_output=True,
        )
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} -c fsync=off"
        subprocess.run(
            _as_postgres_user(
                [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-l", str(log_file), "-o", options, "-w", "-t", str(int(timeout_s)), "start"]
            ),
            check=True,
            capture_output=True,
        )
        subprocess.run(
            _as_postgres_user([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, database]),
            check=True,
            capture_output=True,
        )
        yield Postgres(data_dir=data_dir, port=port, database=database, user=user)
    except subprocess.CalledProcessError as exc:
        log = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
        raise RuntimeError(f"postgres failed: {exc.cmd}: {exc.stderr.decode(errors='replace')}\n{log}") from exc
    finally:
        subprocess.run(
            _as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class PrefectServer:
    """A running ``prefect server start``: its API URL, UI URL and environment."""

    url: str
    env: dict[str, str]
    log_file: Path

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def _wait_healthy(api_url: str, process: subprocess.Popen, log_file: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited with {process.returncode}:\n{log_file.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout_s:.0f} s:\n{log_file.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def running_prefect_server(
    database_url: str, home: Path, timeout_s: float = 120.0
) -> Iterator[PrefectServer]:
    """Start ``prefect server start`` on 127.0.0.1 against ``database_url``; stop it after.

    The server's PREFECT_HOME is ``home``; analytics are off. The yielded ``env`` is
    what a client process needs to talk to this server (PREFECT_API_URL set).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_API_DATABASE_CONNECTION_URL": database_url,
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_UI_API_URL": f"{url}/api",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
        }
    )
    env.pop("PREFECT_API_URL", None)
    log_file = home / "server.log"
    prefect = str(Path(sys.executable).with_name("prefect"))
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(f"{url}/api", process, log_file, timeout_s)
        client_env = dict(env)
        client_env["PREFECT_API_URL"] = f"{url}/api"
        yield PrefectServer(url=url, env=client_env, log_file=log_file)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def render_page(url: str, screenshot: Path, budget_ms: int = 15000) -> str:
    """Load ``url`` in headless Chromium; save a PNG screenshot and return the rendered DOM.

    ``--virtual-time-budget`` lets the single-page app fetch from the API and render
    before the DOM is dumped; each call uses a fresh ``--user-data-dir``.
    """
    chromium = chromium_binary()
    if chromium is None:
        raise FileNotFoundError("chromium not found; run scripts/install_system_deps.sh")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pairforge-chromium-") as profile:
        common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
        dom = subprocess.run(
            [*common, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
        ).stdout
    with tempfile.TemporaryDirectory(prefix="pairforge-chromium-") as profile:
        common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]
        subprocess.run(
            [*common, "--window-size=1400,1000", f"--screenshot={screenshot}", url],
            capture_output=True,
            timeout=120,
            check=True,
        )
    return dom
