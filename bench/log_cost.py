"""What a log line costs the gateway: in a loop, from many threads at once, and on a first visit.

Three measurements, in one process, through the gateway's real log path (JSON lines, the queue
handler and its writer thread, written to a file). All are CPU time of the whole process (every
thread, the writer's included), not wall time: on a shared machine other processes' load then
does not count, and the writer's work does.

1. in a loop: a request line and an audit event, logged N times back to back, and the JSON
   formatting of one line alone (microseconds per call);
2. from 8 threads at once (gunicorn's threads per worker): request lines logged concurrently,
   per line; the handler's lock and the queue's are taken here by every thread;
3. a first visit with the gateway's info lines on and off (``gateway`` logger at INFO or
   WARNING), in interleaved rounds, through the gateway's WSGI app (``bench/run.py``'s
   workload (a), no server): what the three lines of a first visit cost together.

``--logs FILE`` runs another version of ``gateway/ops/logs.py`` in its place (say
``git show main:gateway/ops/logs.py > /some/dir/logs_main.py``); ``--compare FILE`` runs this
tree's and FILE's alternately in fresh processes, ``--runs`` times each, and prints the
medians side by side with their ratios.

Usage: python bench/log_cost.py [--requests 3000] [--rounds 5] [--logs FILE | --compare FILE --runs 3]
"""
from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import logging
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import workloads  # noqa: E402
from bench.profile_workloads import environ, per_request_us  # noqa: E402

ACCESS = ("request method=%s path=%s endpoint=%s status=%s ms=%.1f", "GET", "/", "embed.index", 200, 1.234)
AUDIT = dict(email="user0001@team01.acme.example", tenant="acme", subtenant="team01",
             rule="email_domain team01.acme.example", mode="proxy")
THREADS = 8
ROWS = ("request line", "audit event", "JSON formatting alone", f"request line, {THREADS} threads",
        "first visit, info lines on", "first visit, info lines off", "first visit, the lines' share")


def use_logs_module(path: str) -> None:
    """Load ``path`` as ``gateway.ops.logs`` before anything imports the real one."""
    spec = importlib.util.spec_from_file_location("gateway.ops.logs", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gateway.ops.logs"] = module
    spec.loader.exec_module(module)


def in_a_loop(n: int) -> dict[str, float]:
    from gateway.ops import audit

    access = logging.getLogger("gateway.ops.logs")
    record = access.makeRecord(access.name, logging.INFO, "", 0, ACCESS[0], ACCESS[1:], None)
    record.request_id = "-"
    # The gateway's handler, found the same way in this tree's logs.py and in another (--logs).
    formatter = [h for h in logging.root.handlers if hasattr(h, "writer")][0].writer.formatter
    out = {}
    for name, step in (("request line", lambda: access.info(*ACCESS)),
                       ("audit event", lambda: audit.event("embed_viewed", **AUDIT)),
                       ("JSON formatting alone", lambda: formatter.format(record))):
        started = time.process_time()
        for _ in range(n):
            step()
        out[name] = (time.process_time() - started) / n * 1e6
    return out


def from_threads(n: int) -> float:
    """Per request line while THREADS threads each log ``n`` of them."""
    access = logging.getLogger("gateway.ops.logs")
    go = threading.Barrier(THREADS + 1)

    def work():
        go.wait()
        for _ in range(n):
            access.info(*ACCESS)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    go.wait()
    started = time.process_time()
    for thread in threads:
        thread.join()
    return (time.process_time() - started) / (n * THREADS) * 1e6


def per_visit_us(app, visits, n: int) -> float:
    return per_request_us(app, visits, n, clock=time.process_time)  # CPU time: wall time is the machine's


def measure(args) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="gateway-logcost-"))
    sim, settings = workloads.in_process_settings(tmp, "bench-key", secrets.token_urlsafe(24),
                                                  secrets.token_urlsafe(40))
    try:
        os.environ.update(settings)
        log = os.open(tmp / "gateway.log", os.O_WRONLY | os.O_CREAT, 0o600)
        os.dup2(log, 1)  # the lines go to a file, as in production they go to a pipe
        os.dup2(log, 2)
        if args.logs:
            use_logs_module(args.logs)
        import wsgi

        app = wsgi.app.wsgi_app
        visits = (environ("/", {"X-Forwarded-Email": f"n{n}@team{n % workloads.TEAMS:02d}.acme.example"})
                  for n in itertools.count())
        per_visit_us(app, visits, 500)  # tokens fetched, code paths warm

        out = in_a_loop(args.requests)
        out[ROWS[3]] = from_threads(args.requests // THREADS * 4)
        gateway = logging.getLogger("gateway")
        on, off = [], []
        for _ in range(args.rounds):
            gateway.setLevel(logging.INFO)
            on.append(per_visit_us(app, visits, args.requests))
            gateway.setLevel(logging.WARNING)
            off.append(per_visit_us(app, visits, args.requests))
        gateway.setLevel(logging.INFO)
    finally:
        workloads.stop(sim)
    out[ROWS[4]], out[ROWS[5]] = statistics.median(on), statistics.median(off)
    out[ROWS[6]] = out[ROWS[4]] - out[ROWS[5]]
    return out


def compare(args, report) -> None:
    """This tree's logs.py and ``args.compare``, alternately in fresh processes."""
    runs: dict[str, list[dict[str, float]]] = {"this tree": [], "--compare": []}
    for _ in range(args.runs):
        for name, extra in (("this tree", []), ("--compare", ["--logs", args.compare])):
            done = subprocess.run([sys.executable, __file__, "--json", "--requests", str(args.requests),
                                   "--rounds", str(args.rounds), *extra],
                                  capture_output=True, text=True, timeout=1800, check=True)
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"\nCPU microseconds (medians of {args.runs} runs each, alternating)   this tree   --compare   ratio",
          file=report)
    for row in ROWS:
        new = statistics.median(run[row] for run in runs["this tree"])
        old = statistics.median(run[row] for run in runs["--compare"])
        print(f"  {row:46s} {new:9.1f}   {old:9.1f}   {new / old:5.2f}", file=report)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--logs", metavar="FILE", help="run this logs.py in place of gateway/ops/logs.py")
    parser.add_argument("--compare", metavar="FILE", help="this tree's logs.py against FILE, side by side")
    parser.add_argument("--runs", type=int, default=3, help="with --compare: runs of each")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    report = os.fdopen(os.dup(1), "w", buffering=1)
    if args.compare:
        compare(args, report)
        return 0
    out = measure(args)
    if args.json:
        print(json.dumps(out), file=report)
        return 0
    print("\nCPU microseconds", file=report)
    for row in ROWS:
        print(f"  {row:46s} {out[row]:9.1f}", file=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
