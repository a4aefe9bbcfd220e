"""What a full garbage collection costs a worker, with and without the master's ``gc.freeze()``.

gunicorn.conf.py's ``pre_fork`` collects, then freezes every object of the preloaded app before each
fork, so a worker's full collections no longer walk them (nor touch their memory pages, which the
workers then keep sharing with the master). A full collection stops the whole worker: under gevent, every
request it holds waits for it.

Each round runs both variants in a fresh process, alternating: the gateway loaded in process (as
the master preloads it), frozen or not, then what a worker does after its fork (1,000 users signed
in, their proxied calls, 5,000 first visits: the memos a round of bench/run.py fills), timing the
full collections those requests set off, then the time of ``gc.collect()`` (median of 7) and the
objects a collection walks. The stand-in dashboard runs under gunicorn, as in
bench/profile_workloads.py.
Usage: python bench/gc_pauses.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import workloads  # noqa: E402
from bench.profile_workloads import call, environ, signed_in  # noqa: E402

VARIANTS = ("not frozen", "frozen before the fork")


def worker(frozen: bool, log: str) -> dict:
    """One variant, in this process: the numbers as a dict."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)  # the gateway's lines, not the report
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import wsgi

    if frozen:  # what pre_fork does in the master, after preload_app
        gc.collect()
        gc.freeze()
    app = wsgi.app.wsgi_app
    full: list[float] = []  # the full collections the requests below set off, and how long each took
    began: list[float] = []

    def timed(phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                began.append(time.perf_counter())
            else:
                full.append(time.perf_counter() - began.pop())

    gc.callbacks.append(timed)
    load_started = time.perf_counter()
    cookies = signed_in(app, workloads.user_emails())
    for email, cookie in cookies.items():
        call(app, environ("/dashboard/api/summary", {"X-Forwarded-Email": email, "Cookie": cookie}))
    for n in range(5000):
        call(app, environ("/", {"X-Forwarded-Email": f"new{n}@team{n % 50:02d}.acme.example"}))
    load_seconds = time.perf_counter() - load_started
    gc.callbacks.remove(timed)
    pauses = []
    for _ in range(7):
        collected = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - collected)
    return {"full_collection_ms": statistics.median(pauses) * 1000, "during_load": len(full),
            "during_load_max_ms": max(full, default=0) * 1000, "during_load_total_ms": sum(full) * 1000,
            "load_s": load_seconds,
            "walked": sum(len(gc.get_objects(generation)) for generation in range(3)),
            "frozen": gc.get_freeze_count()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variant", choices=("0", "1"), help=argparse.SUPPRESS)  # a child's
    parser.add_argument("--log", help=argparse.SUPPRESS)
    parser.add_argument("--report-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant is not None:
        result = worker(args.variant == "1", args.log)
        os.write(args.report_fd, json.dumps(result).encode())
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="gateway-gc-"))
    sim, settings = workloads.in_process_settings(tmp, "bench-key", secrets.token_urlsafe(24), secrets.token_urlsafe(40))
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    try:
        for _, variant in itertools.product(range(args.rounds), (0, 1)):
            read, write = os.pipe()
            child = subprocess.Popen(
                [sys.executable, __file__, "--variant", str(variant), "--log", str(tmp / "gateway.log"),
                 "--report-fd", str(write)],
                env={**os.environ, **settings, "BENCH_PAGE_BYTES": "2600"}, pass_fds=(write,))
            os.close(write)
            with os.fdopen(read) as pipe:
                output = pipe.read()
            if child.wait() != 0 or not output:
                sys.exit(f"variant {VARIANTS[variant]} failed; its log: {tmp / 'gateway.log'}")
            results[VARIANTS[variant]].append(json.loads(output))
    finally:
        workloads.stop(sim)
    print(f"medians of {args.rounds} rounds, each variant in a fresh process, alternating")
    print(f"  {'':<24}{'full collection ms':>19}{'objects walked':>16}{'frozen':>8}"
          f"{'in 7,000 requests: full collections':>37}{'longest ms':>12}{'all ms':>8}{'of s':>7}")
    for name, runs in results.items():
        def median(key: str) -> float:
            return statistics.median(r[key] for r in runs)

        print(f"  {name:<24}{median('full_collection_ms'):>19.2f}{median('walked'):>16.0f}{median('frozen'):>8.0f}"
              f"{median('during_load'):>37.0f}{median('during_load_max_ms'):>12.2f}{median('during_load_total_ms'):>8.1f}"
              f"{median('load_s'):>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
