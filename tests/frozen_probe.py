"""The gateway as production loads it, plus one path that tells how many objects the worker inherited
frozen from the master (test_gunicorn.py): a worker's full garbage collection skips those."""
import gc

from wsgi import app as gateway


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/test-frozen-objects":
        body = str(gc.get_freeze_count()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    return gateway(environ, start_response)
