"""``/sdk.js``: the host SDK a partner's page imports to frame the gateway and talk to it.

A static, dependency-free ES module (``static/sdk.js``). A partner's page loads it from
another origin, and browsers fetch module scripts in CORS mode, so it is sent with
``Access-Control-Allow-Origin: *``: it is the same public file for everyone, carries no
user data and is fetched without cookies (no credentials, so ``*`` is allowed). Its
address has no version in it, so browsers keep it five minutes and then revalidate it
(ETag). Who may frame the gateway, and who may talk to it once framed, is still
``GATEWAY_FRAME_ANCESTORS`` (checked in the browser both ways, see static/gateway.js).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from flask import Blueprint, current_app, request

bp = Blueprint("sdk", __name__)
MAX_AGE = 300


@bp.route("/sdk.js")
def script():
    body = current_app.extensions.get("sdk_js")
    if body is None:  # a few kilobytes, read once
        body = current_app.extensions["sdk_js"] = (Path(current_app.static_folder) / "sdk.js").read_bytes()
    response = current_app.response_class(body, mimetype="text/javascript")
    response.set_etag(hashlib.sha256(body).hexdigest()[:20])
    response.make_conditional(request)
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    response.headers["Cache-Control"] = f"public, max-age={MAX_AGE}"
    return response
