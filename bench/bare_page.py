"""Baseline for the benchmarks: a bare Flask app that renders a page from a session.

No identity checks, no rules, no token, no security headers: it reads the user
from Flask's signed-cookie session and renders a page of the same size as the
gateway's embed page (``BENCH_PAGE_BYTES``). ``/login`` sets the session.
"""
import os

from flask import Flask, session

app = Flask(__name__)
app.secret_key = os.environ.get("GATEWAY_SECRET_KEY", "bench-" + "k" * 40)
PAGE_BYTES = int(os.environ.get("BENCH_PAGE_BYTES", "2500"))
TEMPLATE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{{ team }}</title></head>
<body><header>{{ email }} · {{ team }}</header><main><iframe src="/dashboard/"></iframe></main>
<!-- {{ padding }} --></body></html>"""


@app.route("/login")
def login():
    session["email"] = "user@us.acme.example"
    session["team"] = "Sales US"
    return "ok"


_compiled = {}


@app.route("/")
def page():
    email, team = session.get("email"), session.get("team")
    if not _compiled:  # compiled and sized once: the least a Flask page can do per request
        _compiled["template"] = app.jinja_env.from_string(TEMPLATE)
        bare = _compiled["template"].render(email=email, team=team, padding="")
        _compiled["padding"] = "x" * max(0, PAGE_BYTES - len(bare))
    return _compiled["template"].render(email=email, team=team, padding=_compiled["padding"])
