"""Where a gateway worker's time goes under load, for one workload of bench/run.py (py-spy).

Starts the stand-in and the gateway under gunicorn as bench/run.py does (50 subtenants,
1,000 signed-in users), optionally runs first visits first (``--after first_visit``: in
bench/run.py's rounds other workloads run in between and fill the memos), then runs the
chosen workload with wrk while ``py-spy record --gil`` samples every worker (only the
thread holding the GIL: Python's CPU time). Prints the functions with the most own and
the most inclusive time, as microseconds per answered request.
Needs py-spy (pip install py-spy) and root or ptrace permission.
Usage: python bench/spy.py returning_users [--seconds 8] [--after first_visit] [--rate 400]
"""
from __future__ import annotations

import argparse
import collections
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench import workloads  # noqa: E402
from bench.run import KEY, SECRET, SECRET_KEY, Servers, cpu_ticks, workers_of, wrk  # noqa: E402

SCRIPTS = {"first_visit": ("first_visit.lua", "/"), "returning_users": ("users.lua", "/"),
           "proxied_json": ("users.lua", "/dashboard/api/summary")}


def frame_name(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:line)"; keep module-relative path, drop the line.
    name, _, where = frame.rpartition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for cut in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if cut in path:
            path = path.split(cut, 1)[1]
    return f"{name} ({path})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=sorted(SCRIPTS))
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--after", choices=sorted(SCRIPTS))
    parser.add_argument("--rate", type=int, default=400)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--keep", type=Path, help="copy py-spy's raw stacks into this directory")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    tmp = Path(tempfile.mkdtemp(prefix="gateway-spy-"))
    servers = Servers(tmp, 2, 8)
    try:
        _, sim_url = servers.gunicorn("sim", f"gateway.sim:create_sim_app({{{KEY!r}: {SECRET!r}}})",
                                      {"GATEWAY_WORKER": "gthread"}, workers=1)  # as bench/run.py's
        env = {**workloads.gateway_settings(tmp, sim_url, KEY, SECRET, SECRET_KEY), "WEB_CONCURRENCY": "2"}
        gateway, url = servers.reuse_port("gateway", "wsgi:app", env)
        emails = workloads.user_emails()
        cookies = workloads.sign_in(url, emails)
        users = workloads.users_file(tmp / "users.tsv", cookies)
        email = emails[0]
        again = requests.get(url + "/", headers={"X-Forwarded-Email": email, "Cookie": cookies[email]})
        print(f"a returning user's request: {again.status_code}, Set-Cookie in answer: "
              f"{'Set-Cookie' in again.headers}")

        def run(name: str, seconds: int, during=None) -> dict:
            script, path = SCRIPTS[name]
            return wrk(url, args.connections, seconds, script=script, during=during, BENCH_USERS=str(users),
                       BENCH_PATH=path, BENCH_NONCE=secrets.token_hex(4))

        if args.after:
            print(f"{args.after} first:", run(args.after, 3))
        workers = workers_of(gateway)
        spies = []

        def start_spies():
            for pid in workers:
                out = tmp / f"spy-{pid}.txt"
                spies.append((subprocess.Popen(
                    [spy, "record", "--gil", "--nonblocking", "--format", "raw", "--rate", str(args.rate),
                     "--duration", str(args.seconds - 2), "--pid", str(pid), "--output", str(out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out))

        before = sum(cpu_ticks(pid) for pid in [gateway.pid, *workers])
        result = run(args.workload, args.seconds, during=start_spies)
        ticks = sum(cpu_ticks(pid) for pid in [gateway.pid, *workers]) - before
        for proc, out in spies:
            proc.wait(timeout=60)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                shutil.copy(out, args.keep / out.name)
        own, inclusive, total = collections.Counter(), collections.Counter(), 0
        for _, out in spies:
            for line in out.read_text().splitlines():
                stack, _, count = line.rpartition(" ")
                if not count.isdigit():
                    continue  # a line py-spy cut short when the duration ended
                n = int(count)
                frames = [frame_name(f) for f in stack.split(";") if f]
                frames = frames[1:] if frames and frames[0].startswith("process ") else frames
                frames = [f for f in frames if not f.startswith("thread ")]
                total += n
                if frames:
                    own[frames[-1]] += n
                    for f in set(frames):
                        inclusive[f] += n
        # Requests answered while the spies ran: wrk's rate over the sampled seconds.
        sampled = result["rps"] * (args.seconds - 2)
        us = 1e6 / args.rate / max(1.0, sampled)
        print(f"\n{args.workload}: {result['rps']:.0f} req/s, p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
              f"errors {result['errors']}, CPU {ticks * 1000 / os.sysconf('SC_CLK_TCK') / result['requests']:.3f} ms/req; "
              f"GIL-held samples {total} = {total * us:.0f} us/req")
        for title, counter in (("own time", own), ("inclusive time", inclusive)):
            print(f"\n-- {title}, us per request (GIL held)")
            for name, n in counter.most_common(args.top):
                print(f"{n * us:8.1f}  {name}")
    finally:
        servers.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
