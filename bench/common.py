"""Helpers shared by the benchmark scripts: start gunicorn or redis-server and wait for them."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING = r"Listening at: (http://127\.0\.0\.1:\d+)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pattern: str, log: Path, proc: subprocess.Popen, timeout: float = 30) -> str:
    """The first group of ``pattern`` once it appears in ``log``; exits if the server dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text(errors="replace"))
        if match:
            return match.group(1)
        if proc.poll() is not None:
            sys.exit(f"a benchmark server exited early:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    sys.exit(f"a benchmark server did not start:\n{log.read_text(errors='replace')}")


def start_gunicorn(app: str, env: dict, log: Path, *, workers: int = 1, threads: int = 8,
                   bind: str = "127.0.0.1:0", extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """gunicorn with the production configuration (gunicorn.conf.py), its output in ``log``.

    Returns once every worker has booted; with the default bind, ``wait_for(LISTENING, ...)``
    gives the address.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "--log-level", "info",
         "--bind", bind, "--workers", str(workers), "--threads", str(threads), *extra, app],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "GATEWAY_DRAIN_DELAY": "0", **env},
        stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while log.read_text(errors="replace").count("Booting worker") < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"gunicorn {app}: workers did not boot:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return proc


class RedisServer:
    """A throw-away redis-server on a free loopback port (no persistence)."""

    def __init__(self, workdir: Path):
        self.port, self.workdir, self.proc = free_port(), workdir, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(self.port), "--bind",
                                      "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:  # ready once it accepts a connection
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit("redis-server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
