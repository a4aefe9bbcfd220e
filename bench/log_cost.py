"""What a log line costs the gateway: in a loop, inside the app, and on a first visit as a whole.

Three measurements, in one process, through the gateway's real log path (JSON lines,
the queue handler and its writer thread, written to a file):

1. in a loop: a request line and an audit event, logged N times back to back, and the
   JSON formatting of one line alone (microseconds per call);
2. inside the app: the same calls timed one by one while the gateway's WSGI app serves
   first visits (``bench/run.py``'s workload (a), no server): the logging code then runs
   between the rest of a request's work, as it does in production;
3. a first visit with the gateway's info lines on and off (``gateway`` logger at INFO or
   WARNING), in interleaved rounds: what the three lines of a first visit cost together.

The README's "Where the rest goes" quotes these. Usage: python bench/log_cost.py [--requests 3000] [--rounds 5]
"""
from __future__ import annotations

import argparse
import itertools
import logging
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import workloads  # noqa: E402
from bench.profile_workloads import environ, per_request_us  # noqa: E402

ACCESS = ("request method=%s path=%s endpoint=%s status=%s ms=%.1f", "GET", "/", "embed.index", 200, 1.234)
AUDIT = dict(email="user0001@team01.acme.example", tenant="acme", subtenant="team01",
             rule="email_domain team01.acme.example", mode="proxy")


def in_a_loop(n: int) -> dict[str, float]:
    from gateway.ops import audit, logs

    access = logging.getLogger("gateway.ops.logs")
    record = access.makeRecord(access.name, logging.INFO, "", 0, ACCESS[0], ACCESS[1:], None)
    record.request_id = "-"
    formatter = logs._installed.writer.formatter
    out = {}
    for name, step in (("request line", lambda: access.info(*ACCESS)),
                       ("audit event", lambda: audit.event("embed_viewed", **AUDIT)),
                       ("JSON formatting alone", lambda: formatter.format(record))):
        started = time.perf_counter()
        for _ in range(n):
            step()
        out[name] = (time.perf_counter() - started) / n * 1e6
    return out


class CallTimer:
    """Times every Logger.info call (by logger) and every line's formatting, while installed."""

    def __init__(self, handler):
        self.times: dict[str, list[float]] = {}
        self._handler = handler
        self._info = logging.Logger.info
        self._prepare = handler.prepare

    def __enter__(self):
        times, info, prepare = self.times, self._info, self._prepare

        def timed_info(logger, *args, **kwargs):
            started = time.perf_counter()
            info(logger, *args, **kwargs)
            times.setdefault(f"{logger.name} call", []).append(time.perf_counter() - started)

        def timed_prepare(record):
            started = time.perf_counter()
            line = prepare(record)
            times.setdefault("JSON formatting alone", []).append(time.perf_counter() - started)
            return line

        logging.Logger.info = timed_info
        self._handler.prepare = timed_prepare
        return self

    def __exit__(self, *exc):
        logging.Logger.info = self._info
        self._handler.prepare = self._prepare


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    report = os.fdopen(os.dup(1), "w", buffering=1)
    tmp = Path(tempfile.mkdtemp(prefix="gateway-logcost-"))
    sim, settings = workloads.in_process_settings(tmp, "bench-key", secrets.token_urlsafe(24),
                                                  secrets.token_urlsafe(40))
    try:
        os.environ.update(settings)
        log = os.open(tmp / "gateway.log", os.O_WRONLY | os.O_CREAT)
        os.dup2(log, 1)  # the lines go to a file, as in production they go to a pipe
        os.dup2(log, 2)
        import wsgi
        from gateway.ops import logs

        logs.start_writer()
        app = wsgi.app.wsgi_app
        counter = itertools.count()
        visits = (environ("/", {"X-Forwarded-Email": f"n{n}@team{n % workloads.TEAMS:02d}.acme.example"})
                  for n in counter)
        per_request_us(app, visits, 500)  # tokens fetched, code paths warm

        loop = in_a_loop(args.requests)
        with CallTimer(logs._installed) as timer:
            per_request_us(app, visits, args.requests)
        gateway = logging.getLogger("gateway")
        on, off = [], []
        for _ in range(args.rounds):
            gateway.setLevel(logging.INFO)
            on.append(per_request_us(app, visits, args.requests))
            gateway.setLevel(logging.WARNING)
            off.append(per_request_us(app, visits, args.requests))
        gateway.setLevel(logging.INFO)
    finally:
        sim.terminate()
        sim.wait(timeout=30)

    print("\nmicroseconds per call            in a loop   inside the app (median of calls on first visits)",
          file=report)
    names = {"request line": "gateway.ops.logs call", "audit event": "gateway.audit call",
             "JSON formatting alone": "JSON formatting alone"}
    for name, timed in names.items():
        inside = timer.times.get(timed, [])
        median = f"{statistics.median(inside) * 1e6:8.1f}" if inside else "       -"
        print(f"  {name:28s} {loop[name]:9.1f}   {median}", file=report)
    print(f"\na first visit, in process (medians of {args.rounds} interleaved rounds of {args.requests}):\n"
          f"  info lines on  {statistics.median(on):7.0f} us\n  info lines off {statistics.median(off):7.0f} us\n"
          f"  the lines' share: {statistics.median(on) - statistics.median(off):.0f} us "
          f"({1 - statistics.median(off) / statistics.median(on):.0%})", file=report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
