"""Baseline for the benchmarks: a bare Flask app that renders a page from a session.

No rules, no token, no security headers, no audit lines: it does what any Flask
app behind an identity proxy must do and nothing more. With an identity header
(``X-Forwarded-Email``) whose address is not the one in the session (a first
visit, no cookie), it starts a session from the header (Set-Cookie); otherwise it
reads the user from Flask's signed-cookie session. Then it renders a page of the
same size as the gateway's embed page (``BENCH_PAGE_BYTES``). ``/login`` sets a
fixed user's session (for bench/app_cost.py, which sends no header).
With ``BENCH_OBLIGATIONS=1`` it also writes the gateway's request id, access line, metrics
and security headers (bench/obligations.py: the floor under the targets).
"""
import os

from flask import Flask, request, session

# The floor only: the bare baseline imports nothing of the gateway.
obligations = None
if os.environ.get("BENCH_OBLIGATIONS") == "1":
    from bench import obligations

app = Flask(__name__)
app.secret_key = os.environ.get("GATEWAY_SECRET_KEY", "bench-" + "k" * 40)
if obligations:
    obligations.add_to(app)
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
    header = request.headers.get("X-Forwarded-Email")
    first_visit = bool(header) and session.get("email") != header
    if first_visit:
        # First visit (or another user on this browser): a fresh session from the proxy's header.
        session.clear()
        session["email"] = header
        session["team"] = header.rpartition("@")[2].split(".", 1)[0]
    email, team = session.get("email"), session.get("team")
    if not _compiled:  # compiled and sized once: the least a Flask page can do per request
        _compiled["template"] = app.jinja_env.from_string(TEMPLATE)
        bare = _compiled["template"].render(email=email, team=team, padding="")
        _compiled["padding"] = "x" * max(0, PAGE_BYTES - len(bare))
    return _compiled["template"].render(email=email, team=team, padding=_compiled["padding"])
