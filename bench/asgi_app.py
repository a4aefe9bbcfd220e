"""The gateway as an ASGI app (a2wsgi), for bench/slow_clients.py's uvicorn-worker candidate only."""
from a2wsgi import WSGIMiddleware

from wsgi import app as wsgi_app

# As many WSGI threads as the gthread worker has (GATEWAY_THREADS's default).
app = WSGIMiddleware(wsgi_app, workers=8)
