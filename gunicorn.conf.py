"""gunicorn settings for production: ``gunicorn wsgi:app`` picks this file up."""
import os

# gevent's workers (GATEWAY_WORKER, default gevent): every connection is a greenlet, so a slow
# client holds a greenlet, not a thread. gevent's documentation requires its patching before
# anything else is imported, and the app is preloaded in the master (preload_app), so it comes
# first, here. (gevent.monkey.patch_all is gevent's documented API, not ours.)
worker_choice = os.environ.get("GATEWAY_WORKER", "gevent").strip().lower() or "gevent"
if worker_choice == "gevent":
    from gevent import monkey

    monkey.patch_all()

import atexit  # after gevent's patching
import shutil
import sys

# The checkout is importable wherever gunicorn starts (``-c /path/to/gunicorn.conf.py`` from another
# directory), as --chdir makes it for the app.
_checkout = os.path.dirname(os.path.abspath(__file__))
if _checkout not in sys.path:
    sys.path.insert(0, _checkout)

from gateway.serving import conffile  # noqa: E402
from gateway.config import ConfigError, env_int, env_seconds
from gateway.statedir import private_dir, state_dir  # neither imports prometheus_client

conffile.mark(os.environ, __file__)  # wsgi.py refuses to load under gunicorn without it

# Prometheus multiprocess mode: every worker writes its samples to one directory, and a scrape of
# /metrics adds them up. It is set before anything imports prometheus_client (gateway.ops.logs
# does), so the master and every worker inherit it, and it lives in the gateway's private state
# directory, never a shared temporary one. (gunicorn re-reads this file on HUP: the environment
# remembers that we made the directory.)
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _state = state_dir(os.environ.get("GATEWAY_STATE_DIR", ""))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(_state, f"metrics-{os.getpid()}")
    os.environ["GATEWAY_METRICS_DIR_CREATED"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    try:
        private_dir(_state)  # refused like the app refuses it: a symlink, another's, or open to others
        os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], 0o700, exist_ok=True)
    except ConfigError as exc:
        print(f"gateway: cannot start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None

    def _remove_ours(path=os.environ["PROMETHEUS_MULTIPROC_DIR"], master=os.getpid()):
        # At the master's exit, however it ends (a start refused while the app loads never reaches
        # gunicorn's on_exit hook); a forked worker's exit is not the master's.
        if os.getpid() == master:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(_remove_ours)

bind = f"0.0.0.0:{env_int('PORT', 8000)}"
# gevent: slow clients hold greenlets (up to worker_connections each); gthread is for a
# deployment behind a buffering front (deploy/nginx.conf). See docs/operations.md, "Production start".
worker_class = worker_choice if worker_choice in ("gevent", "gthread") else "gevent"
workers = env_int("WEB_CONCURRENCY", 2)
# gthread: the threads; gevent: the app runs at most this many requests at once per worker
# (gateway/serving/admission.py), so CPU-bound requests do not all interleave.
threads = env_int("GATEWAY_THREADS", 8)
worker_connections = 1000
# Load the app once in the master: a bad setting stops start-up with one line,
# and workers share the loaded code's memory.
preload_app = True
timeout = 60
# Requests in flight (a large export included) get this long to finish after a stop.
graceful_timeout = int(env_seconds("GATEWAY_GRACEFUL_TIMEOUT", 120))
# gevent: a request's line and headers (and the idle time before them on a kept-alive
# connection) must arrive within this many seconds in all, or the connection is closed.
keepalive = int(env_seconds("GATEWAY_HEADER_TIMEOUT", 5)) or 1
# Identity headers spelled with "_" could stand in for the real ones: drop them.
header_map = "drop"
# No access log: ours (gateway.ops.logs) names the path without the query string.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("GATEWAY_LOG_LEVEL", "info").lower()
# gunicorn's own lines in the gateway's format, so a JSON log stays all JSON.
logger_class = "gateway.ops.gunicornlog.GunicornLogger"
# Several gateways may run on one host (and in the tests); none needs the control socket.
control_socket_disable = True

def on_starting(server):
    """Samples from an earlier run must not be added to this one's. Under gevent the master's lines
    are written by a greenlet of its one thread: its stdout pipe gets a non-blocking file description
    of its own, as each worker's does, so a log reader that stalls costs lines, never a stop or a
    reload (gateway/serving/output.py; the workers reopen their own)."""
    from gateway.bounded import under_gevent
    from gateway.serving.output import make_own_nonblocking

    if under_gevent():
        make_own_nonblocking(1)
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if os.environ.get("GATEWAY_METRICS_DIR_CREATED") == path:
        server.log.info("metrics directory %s (removed on exit)", path)
        _remove_left_behind(os.path.dirname(path))
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))


def _remove_left_behind(state):
    """The metrics directories of masters that ended without their exit handler (killed): a directory
    of a master still running (another gateway on this state directory) is left alone."""
    for name in os.listdir(state):
        pid = name.removeprefix("metrics-")
        if name.startswith("metrics-") and pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(os.path.join(state, name), ignore_errors=True)
            except PermissionError:
                pass  # a running process of another user: not ours to judge


def when_ready(server):
    """The preflight's network checks, once, as WARNING lines (gateway/admin/preflight.py).

    Here in the master, after the app was preloaded and before any worker is forked: every
    check has finished and closed its connections when this returns, so no worker inherits
    a half-done request. Start-up goes on whatever they find.
    """
    if server.cfg.preload_app:  # otherwise the master has no app, and must not load one
        from gateway.admin.preflight import check_at_start
        from gateway.ops import logwriter

        check_at_start(server.app.wsgi())
        # Its lines written out now, before any worker's (a worker forked while they wait would
        # not write them: its copy of this writer writes nothing, gateway/ops/logwriter.py).
        logwriter.stop_writer()
        logwriter.start_writer()
        from gateway.bounded import under_gevent

        if under_gevent():
            import gevent

            # Under gevent the stopped writer's end and the new one's start are callbacks still
            # queued in the hub: run them here, not in each forked worker's copy of the hub
            # (gevent 24.10 fails them there with an AssertionError and a traceback per worker).
            gevent.sleep(0)


def pre_fork(server, worker):
    """Everything the master holds by now (the preloaded app) is frozen out of the garbage collector:
    ``gc.freeze``, the standard library's way to keep a forked child's collections off its parent's
    objects. A worker's full collection, which stops every request it holds, no longer walks them
    (bench/gc_pauses.py), so their memory pages stay shared with the master.
    Garbage is collected first, or it would be kept for good: a reload leaves gunicorn's old
    settings behind (``on_reload`` thaws what was frozen, so the next fork collects them)."""
    import gc

    gc.collect()  # what was made since the last fork (the first time: the app's loading)
    gc.freeze()


def post_fork(server, worker):
    # The app was loaded in the master: this worker needs a log writer thread of its own.
    from gateway.ops import logwriter

    logwriter.after_fork()


def post_worker_init(worker):
    """SIGTERM drains first, a reload does not (gateway/serving/stopping.py); under gevent a stalled
    stdout costs log lines, not the worker (gateway/serving/output.py)."""
    from gateway.bounded import under_gevent
    from gateway.serving.output import make_own_nonblocking
    from gateway.serving.stopping import install

    if under_gevent():
        make_own_nonblocking(1)

    # The app's settings, already checked at start-up (preload_app); a bare benchmark app has none.
    cfg = getattr(worker.wsgi, "config", {})
    install(worker, cfg.get("GATEWAY_DRAIN_DELAY", env_seconds("GATEWAY_DRAIN_DELAY", 5)))


def on_reload(server):
    import gc

    from gateway.serving.stopping import mark_replaced

    gc.unfreeze()  # the replaced settings are garbage now: pre_fork collects them before the next fork
    mark_replaced(server.WORKERS)  # the workers running now are the ones being replaced


def child_exit(server, worker):
    from gateway.ops.metrics import retire_process

    retire_process(worker.pid, os.environ["PROMETHEUS_MULTIPROC_DIR"])
