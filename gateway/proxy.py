"""The dashboard reverse proxy (placeholder until the proxy issue lands)."""
from flask import Blueprint, abort

bp = Blueprint("proxy", __name__)


@bp.route("/dashboard/", defaults={"path": ""})
@bp.route("/dashboard/<path:path>")
def dashboard(path):
    abort(404)
