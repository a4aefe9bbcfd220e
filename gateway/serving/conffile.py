"""Whether gunicorn read the gateway's ``gunicorn.conf.py``: the production start's settings are there.

gunicorn reads ``./gunicorn.conf.py`` from the directory it starts in, before ``--chdir``, and runs
without it silently: one sync worker, no gevent, no preload, no limits, per-process metrics, plain
log lines. The file marks the environment it runs in; the app refuses to load under gunicorn without
that mark, with one line saying how to start it (each worker says it; gunicorn then stops).
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, MutableMapping

MARK = "GATEWAY_GUNICORN_CONF_READ"
HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mark(environ: MutableMapping[str, str], conf_file: str) -> None:
    """Called by gunicorn.conf.py: the master and every worker inherit the mark."""
    environ[MARK] = os.path.abspath(conf_file)


def problem(environ: Mapping[str, str], modules: Mapping[str, object] = sys.modules) -> str | None:
    """Why the app must not load here, or None: loaded by gunicorn without the mark. gunicorn's
    master sets SERVER_SOFTWARE for its workers; ``gunicorn --check-config`` starts no master, but
    runs gunicorn's command line all the same."""
    by_gunicorn = (environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/")
                   or "gunicorn.app.wsgiapp" in modules)
    if not by_gunicorn or environ.get(MARK):
        return None
    conf = os.path.join(HERE, "gunicorn.conf.py")
    return (f"gunicorn did not read {conf} (it reads ./gunicorn.conf.py in the directory it starts in, "
            f"before --chdir): start it in {HERE}, or pass -c {conf}")
