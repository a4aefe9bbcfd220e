"""Production entry point: ``gunicorn wsgi:app`` (see gunicorn.conf.py); also ``flask --app wsgi gateway``."""
import sys

import click

from gateway import create_app
from gateway.config import ConfigError
from gateway.serving.admission import Admission, answer_refused_body
from gateway.tenancy.rules import RulesError

try:
    app = create_app()
except (ConfigError, RulesError) as exc:
    if click.get_current_context(silent=True) is not None:
        # Loaded by the ``flask`` command line: --help still works, and every command
        # lists all the problems and exits 3 (gateway.admin.cli).
        from gateway.admin.cli import unconfigured_app

        app = unconfigured_app(exc)
    else:
        # One line the operator can act on (every problem in it), not a traceback.
        print(f"gateway: cannot start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None
else:
    # Flask's documented place for WSGI middleware: bodies read under a deadline, places per worker.
    app.wsgi_app = Admission(app.wsgi_app, places=app.config["GATEWAY_THREADS"],
                             body_timeout=app.config["GATEWAY_BODY_TIMEOUT"],
                             client_timeout=app.config["GATEWAY_CLIENT_TIMEOUT"],
                             max_body=app.config["GATEWAY_PROXY_MAX_BODY"],
                             body_buffer=app.config["GATEWAY_BODY_BUFFER"])
    app.before_request(answer_refused_body)
