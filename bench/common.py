"""Helpers shared by the benchmark scripts: start a server and wait for its address."""
from __future__ import annotations

import re
import socket
import sys
import time
from pathlib import Path
import subprocess


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
