"""Production entry point: ``gunicorn wsgi:app`` (see gunicorn.conf.py); also ``flask --app wsgi gateway``."""
import os
import sys

import click

from gateway import create_app
from gateway.config import ConfigError
from gateway.serving import admission, conffile
from gateway.tenancy.rules import RulesError

if (_problem := conffile.problem(os.environ)) is not None:
    # Under gunicorn without the shipped settings nothing the docs promise of the start holds.
    print(f"gateway: cannot start: {_problem}", file=sys.stderr, flush=True)
    raise SystemExit(3)

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
    # Bodies read under a deadline, places per worker, a turn per request (gateway/serving/admission.py).
    admission.install(app)
