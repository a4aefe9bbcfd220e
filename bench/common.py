"""Helpers shared by the benchmark scripts (and tests/test_slow_clients.py): start gunicorn,
redis-server or the nginx front of deploy/nginx.conf, and wait for them."""
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
                   bind: str = "127.0.0.1:0", extra: tuple[str, ...] = (), root: Path = ROOT) -> subprocess.Popen:
    """gunicorn with the production configuration (``root``/gunicorn.conf.py), its output in ``log``.

    Returns once every worker has booted; with the default bind, ``wait_for(LISTENING, ...)``
    gives the address. ``root`` may be another checkout of the gateway (an earlier version).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(root / "gunicorn.conf.py"), "--log-level", "info",
         "--bind", bind, "--workers", str(workers), "--threads", str(threads), *extra, app],
        # No start-up preflight: its one token request would count in the herds' token figures.
        cwd=root, env={**os.environ, "PYTHONPATH": str(root), "GATEWAY_DRAIN_DELAY": "0",
                       "GATEWAY_STARTUP_CHECK": "false", **env},
        stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while log.read_text(errors="replace").count("Booting worker") < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"gunicorn {app}: workers did not boot:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return proc


def nginx_config(upstream: str, port: int, workdir: Path, keep_identity: bool = False) -> Path:
    """A complete nginx.conf running deploy/nginx.conf as shipped, its upstream and listen
    addresses replaced, every path of nginx's own inside ``workdir`` (a private directory).

    ``keep_identity``: pass the identity headers on, as the file says to do when an SSO proxy
    in front of nginx sets them (the benchmarks sign their users in that way).
    """
    site = (ROOT / "deploy" / "nginx.conf").read_text()
    if keep_identity:
        site = re.sub(r"\n\s*proxy_set_header X-Forwarded-(Email|Groups) \"\";", "", site)
    site, upstreams = re.subn(r"server 127\.0\.0\.1:8000;", f"server {upstream};", site)
    site, listens = re.subn(r"listen 8080;", f"listen 127.0.0.1:{port};", site)
    assert upstreams == 1 and listens == 1, "deploy/nginx.conf: the upstream or listen line changed"
    (workdir / "site.conf").write_text(site)
    temp = "\n".join(f"    {kind}_temp_path {workdir / kind};" for kind in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = workdir / "nginx.conf"
    main.write_text(("user root;\n" if os.geteuid() == 0 else "") +
                    f"worker_processes 1;\ndaemon off;\npid {workdir / 'nginx.pid'};\n"
                    f"error_log {workdir / 'error.log'} warn;\nevents {{ worker_connections 4096; }}\n"
                    f"http {{\n    access_log off;\n{temp}\n    include {workdir / 'site.conf'};\n}}\n")
    return main


def start_nginx(upstream_url: str, workdir: Path, keep_identity: bool = False) -> tuple[subprocess.Popen, str]:
    """nginx with deploy/nginx.conf in front of ``upstream_url``; returns the process and its URL."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    conf = nginx_config(upstream_url.removeprefix("http://"), port, workdir, keep_identity)
    proc = subprocess.Popen([nginx, "-e", str(workdir / "error.log"), "-p", str(workdir), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("nginx did not start: " + (workdir / "error.log").read_text(errors="replace"))
            time.sleep(0.05)


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
