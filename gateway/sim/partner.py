"""The partner's page the demo frames the gateway in: examples/host/ served as a partner would.

The example files name the gateway ``https://insights.partner.example``; the demo serves them with
its own gateway's address in its place, from another site than the gateway's (``127.0.0.1`` frames
``localhost``), so cross-site embedding (SameSite=None, Partitioned cookies) can be seen.
"""
from __future__ import annotations

from pathlib import Path

from werkzeug.wrappers import Request, Response

EXAMPLE_GATEWAY = "https://insights.partner.example"
FILES = {"/": ("index.html", "text/html"), "/insights.js": ("insights.js", "text/javascript")}


def partner_app(example_dir: Path, gateway_url: str):
    """A WSGI app serving the example host page in ``example_dir`` with ``gateway_url`` as the gateway's address."""
    pages = {path: ((example_dir / name).read_text(encoding="utf-8").replace(EXAMPLE_GATEWAY, gateway_url), kind)
             for path, (name, kind) in FILES.items()}

    @Request.application
    def app(request: Request) -> Response:
        if request.path not in pages:
            return Response("not found", status=404, mimetype="text/plain")
        body, kind = pages[request.path]
        return Response(body, mimetype=kind, headers={"Cache-Control": "no-store"})

    return app
