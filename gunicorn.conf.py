"""gunicorn settings for production: ``gunicorn wsgi:app`` picks this file up."""
import os
import shutil
import tempfile

# Prometheus multiprocess mode: every worker writes its samples to one directory,
# and a scrape of /metrics adds them up. This must come before anything imports
# prometheus_client (gateway.ops.logs does), so the master and every worker inherit it.
# (gunicorn re-reads this file on HUP: the environment remembers that we made the directory.)
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ["GATEWAY_METRICS_DIR_CREATED"] = os.environ["PROMETHEUS_MULTIPROC_DIR"]

from gateway.config import env_int, env_seconds  # noqa: E402 - after the metrics directory is set

bind = f"0.0.0.0:{env_int('PORT', 8000)}"
# Threaded workers (a request mostly waits on Zipteams or the dashboard), with a graceful stop:
# not ready at once, serving for GATEWAY_DRAIN_DELAY, then the listener closed (gateway/serving/worker.py).
worker_class = "gateway.serving.worker.GatewayWorker"
workers = env_int("WEB_CONCURRENCY", 2)
threads = env_int("GATEWAY_THREADS", 8)
# Load the app once in the master: a bad setting stops start-up with one line,
# and workers share the loaded code's memory.
preload_app = True
timeout = 60
# Requests in flight (a large export included) get this long to finish after a stop.
graceful_timeout = int(env_seconds("GATEWAY_GRACEFUL_TIMEOUT", 120))
keepalive = 5
# Identity headers spelled with "_" could stand in for the real ones: drop them.
header_map = "drop"
# No access log: ours (gateway.ops.logs) names the path without the query string.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("GATEWAY_LOG_LEVEL", "info").lower()
# gunicorn's own lines in the gateway's format, so a JSON log stays all JSON.
logger_class = "gateway.ops.logformat.GunicornLogger"
# Several gateways may run on one host (and in the tests); none needs the control socket.
control_socket_disable = True

def on_starting(server):
    """Samples from an earlier run must not be added to this one's."""
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    if os.environ.get("GATEWAY_METRICS_DIR_CREATED") == path:
        server.log.info("metrics directory %s (removed on exit)", path)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))


def post_fork(server, worker):
    # The app was loaded in the master: this worker needs a log writer thread of its own.
    from gateway.ops import logs

    logs.after_fork()


def post_worker_init(worker):
    # The app's settings, already checked at start-up (preload_app): one parser for all of them.
    from gateway.serving.worker import GatewayWorker

    if not isinstance(worker, GatewayWorker):
        return  # a test or benchmark comparing against stock gthread
    # (The benchmarks' bare baselines run under this file too, with the worker's defaults.)
    cfg = getattr(worker.wsgi, "config", {})
    worker.drain_delay = cfg.get("GATEWAY_DRAIN_DELAY", worker.drain_delay)
    worker.header_timeout = cfg.get("GATEWAY_HEADER_TIMEOUT", worker.header_timeout)
    worker.client_timeout = cfg.get("GATEWAY_CLIENT_TIMEOUT", worker.client_timeout)


def on_reload(server):
    from gateway.serving.reload import note_reload

    note_reload(server.WORKERS)  # the workers running now are the ones being replaced


def child_exit(server, worker):
    from gateway.ops.metrics import retire_process

    retire_process(worker.pid, os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_exit(server):
    created = os.environ.get("GATEWAY_METRICS_DIR_CREATED")
    if created and created == os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        shutil.rmtree(created, ignore_errors=True)
