"""gunicorn settings for production: ``gunicorn wsgi:app`` picks this file up."""
import os

from gateway.config import env_int

bind = f"0.0.0.0:{env_int('PORT', 8000)}"
# Threaded workers: a request mostly waits on Zipteams or the dashboard.
worker_class = "gthread"
workers = env_int("WEB_CONCURRENCY", 2)
threads = env_int("GATEWAY_THREADS", 8)
# Load the app once in the master: a bad setting stops start-up with one line,
# and workers share the loaded code's memory.
preload_app = True
timeout = 60
graceful_timeout = 30
keepalive = 5
# Identity headers spelled with "_" could stand in for the real ones: drop them.
header_map = "drop"
# No access log: ours (gateway.logs) names the path without the query string.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("GATEWAY_LOG_LEVEL", "info").lower()
# Several gateways may run on one host (and in the tests); none needs the control socket.
control_socket_disable = True
