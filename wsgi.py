"""Production entry point: ``gunicorn wsgi:app`` (see gunicorn.conf.py)."""
import sys

from gateway import create_app
from gateway.config import ConfigError
from gateway.tenancy.rules import RulesError

try:
    app = create_app()
except (ConfigError, RulesError) as exc:
    # One line the operator can act on, not a traceback.
    print(f"gateway: cannot start: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(3) from None
