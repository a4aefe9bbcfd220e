"""The Zipteams Insights embed gateway: a Flask app factory.

``create_app()`` reads every setting from the environment (``gateway.config``);
tests and the demo pass ``test_config``, a mapping of the same names, instead.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

from flask import Flask

from gateway import config as settings

ROOT = Path(__file__).resolve().parent.parent


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the gateway. Raises ConfigError or RulesError with one clear line."""
    from gateway.tenancy.rules import RulesFile

    app = Flask(__name__, template_folder=str(ROOT / "templates"), static_folder=str(ROOT / "static"))
    # "//" must reach the proxy's path check (and be refused), not be merged into a redirect.
    app.url_map.merge_slashes = False
    if test_config is None:
        values = settings.load(os.environ)
        extras: dict[str, Any] = {}
    else:
        # Strings are settings, parsed exactly as from the environment; anything
        # else (a fake clock, TESTING) is passed through for tests.
        values = settings.load({k: v for k, v in test_config.items() if isinstance(v, str)})
        extras = {k: v for k, v in test_config.items() if not isinstance(v, str)}
    app.config.update(values)
    app.config.update(extras)
    if app.config["GATEWAY_AUTH_MODE"] == "demo" and not (
            app.config["GATEWAY_DEBUG"] or app.config.get("DEMO_COMMAND")):
        raise settings.ConfigError(
            "GATEWAY_AUTH_MODE=demo is only for `python -m gateway demo` or GATEWAY_DEBUG=true; "
            "use header mode behind your SSO proxy in production")

    secure = app.config["GATEWAY_COOKIE_SECURE"]
    app.config.update(
        SECRET_KEY=app.config["GATEWAY_SECRET_KEY"],
        SECRET_KEY_FALLBACKS=list(app.config["GATEWAY_SECRET_KEY_FALLBACKS"]),
        # __Host-: the browser refuses it unless Secure, Path=/ and no Domain.
        SESSION_COOKIE_NAME="__Host-zg_session" if secure else "zg_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE=app.config["GATEWAY_COOKIE_SAMESITE"],
        SESSION_COOKIE_PARTITIONED=app.config["GATEWAY_COOKIE_SAMESITE"] == "None",
        SESSION_COOKIE_SECURE=secure,
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_DOMAIN=None,
        MAX_CONTENT_LENGTH=None,  # the proxy enforces its own limit while streaming
        TEMPLATES_AUTO_RELOAD=False,
    )
    from gateway.ops import metrics

    app.extensions["rules"] = RulesFile(
        app.config["GATEWAY_TENANTS_FILE"], app.config["GATEWAY_RULES_RELOAD"],
        monotonic=app.config.get("MONOTONIC", time.monotonic),
        on_reload=lambda result: metrics.RULES_RELOADS.labels(result).inc())
    app.jinja_env.globals["embed_mode"] = app.config["GATEWAY_EMBED_MODE"]

    # Order matters: request ids first, so every later line and page carries one.
    from gateway.identity import auth, revocations, session
    from gateway.admin import cli, health
    from gateway.ops import logs
    from gateway.delivery import embed, proxy, sdk
    from gateway import errors, security, shared
    from gateway.tokens import cache as token_cache
    from gateway.memo import Memo

    logs.init_app(app)
    session.init_app(app)
    errors.init_app(app)
    security.init_app(app)
    shared.init_app(app)
    token_cache.init_app(app)
    revocations.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(embed.bp)
    app.register_blueprint(sdk.bp)
    app.extensions["embed_pages"] = Memo(1024)  # one rendered page per team and look (embed.render_embed)
    if app.config["GATEWAY_EMBED_MODE"] == "proxy":
        proxy.init_app(app)
    if app.config["GATEWAY_AUTH_MODE"] == "oidc":
        from gateway.identity import oidc

        oidc.init_app(app)
    cli.init_app(app)
    _fixed_urls(app)
    return app


def _fixed_urls(app: Flask) -> None:
    """URLs every page uses, worked out once instead of on every render.

    Static files carry a content hash, so browsers may keep them as long as they like.
    """
    import hashlib

    from flask import url_for

    def versioned(filename: str) -> str:
        digest = hashlib.sha256((Path(app.static_folder) / filename).read_bytes()).hexdigest()[:10]
        return url_for("static", filename=filename, v=digest)

    with app.test_request_context():
        app.jinja_env.globals["urls"] = {
            "css": versioned("gateway.css"), "js": versioned("gateway.js"), "embed_js": versioned("embed.js"),
            "brand_css": url_for("embed.brand_css", v=app.config["GATEWAY_BRAND_COLOR"].lstrip("#")),
            "favicon": url_for("embed.favicon", v=app.config["GATEWAY_BRAND_COLOR"].lstrip("#")),
            "select": url_for("embed.select"), "logout": url_for("auth.logout"),
            "login": url_for("auth.login"), "index": url_for("embed.index"),
            "dashboard": url_for("proxy.dashboard", path="") if "proxy" in app.blueprints else "",
        }
    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = 31536000
