"""The embed page, the subtenant picker and the health check.

Which subtenant a request is for is decided here, on every request, from the
tenant rules: the session only remembers the user's choice among the
subtenants they match, so nothing a browser sends can reach another team.
"""
from __future__ import annotations

import logging
from urllib.parse import urlencode

from flask import (Blueprint, abort, current_app, g, jsonify, redirect, render_template, request, session,
                   url_for)

from . import audit, security, tokens
from .auth import login_required
from .errors import NotLinked
from .tenants import Match

logger = logging.getLogger(__name__)
bp = Blueprint("embed", __name__)


class NeedsChoice(Exception):
    """The user matches several subtenants and has not picked one yet."""

    def __init__(self, matches: list[Match]):
        super().__init__("subtenant choice needed")
        self.matches = matches


def user_matches() -> list[Match]:
    """Every subtenant the signed-in user matches, computed once per request."""
    ctx = g._get_current_object()
    matches = ctx.get("matches")
    if matches is None:
        matches = ctx.matches = current_app.extensions["rules"].current().match(ctx.user.email, ctx.user.groups)
    return matches


def current_subtenant() -> Match:
    """The subtenant this request is for, rechecked against the rules; deny by default."""
    ctx = g._get_current_object()
    match = ctx.get("subtenant_match")
    if match is not None:
        return match
    matches = user_matches()
    if not matches:
        audit.event("subtenant_denied", email=ctx.user.email, groups=len(ctx.user.groups), reason="no rule matches")
        raise NotLinked("user matches no subtenant rule")
    chosen = session.get("subtenant")
    match = next((m for m in matches if m.key == chosen), None)
    if match is None:
        if len(matches) > 1:
            raise NeedsChoice(matches)
        match = matches[0]
    ctx.subtenant_match = match
    return match


def frame_src(match: Match) -> tuple[str, float]:
    """The iframe's URL for this subtenant, and when the token behind it stops being served."""
    sub = match.subtenant
    app = current_app._get_current_object()
    cache = tokens.cache()
    token = cache.get(sub.tenant, sub.id)
    if app.config["GATEWAY_EMBED_MODE"] == "iframe":
        src = app.config["ZIPTEAMS_DASHBOARD_URL"] + "?" + urlencode({"token": token.value})
    else:
        from .proxy import placeholder_for

        # The placeholder binds this frame to this subtenant, whatever other tabs choose later.
        src = app.jinja_env.globals["urls"]["dashboard"] + "?token=" + placeholder_for(match.key)
    return src, cache.serve_until(token)


@bp.route("/")
@login_required
def index():
    try:
        match = current_subtenant()
    except NeedsChoice:
        return redirect(url_for("embed.select"))
    sub = match.subtenant
    # Fetching here, not only in the frame, turns an upstream failure into a
    # full error page instead of a broken frame.
    src, serve_until = frame_src(match)
    user = g.user
    audit.event("embed_viewed", email=user.email, tenant=sub.tenant, subtenant=sub.id,
                rule=match.reason, mode=current_app.config["GATEWAY_EMBED_MODE"])
    return render_embed(user, match, src, int(serve_until), user_matches())


_REQUEST_ID_MARK = "\x00request-id\x00"


def render_embed(user, match: Match, src: str, serve_until: int, matches: list[Match]) -> str:
    """The embed page, rendered once per distinct content and reused.

    Everything on it is fixed for a session and team but the request id, which is
    put in per response. The key holds every input of the template.
    """
    key = (user.email, match.key, match.subtenant.name, src, serve_until, security.ensure_csrf(),
           tuple((m.key, m.subtenant.name) for m in matches))
    pages = current_app.extensions["embed_pages"]
    html = pages.get(key)
    if html is None:
        html = render_template("embed.html", user=user, subtenant=match.subtenant, subtenant_key=match.key,
                               frame_src=src, serve_until=serve_until, matches=matches,
                               request_id=_REQUEST_ID_MARK)
        pages.put(key, html)
    return html.replace(_REQUEST_ID_MARK, g.request_id)


@bp.route("/embed/frame")
@login_required
def renew_frame():
    """Iframe mode: a fresh dashboard URL for a long-open page, for the team it shows."""
    if current_app.config["GATEWAY_EMBED_MODE"] != "iframe":
        abort(404)
    match = next((m for m in user_matches() if m.key == request.args.get("subtenant")), None)
    if match is None:
        raise NotLinked("renewal for a subtenant the user does not match")
    src, serve_until = frame_src(match)
    return jsonify(src=src, serve_until=int(serve_until))


@bp.route("/session/status")
def session_status():
    """For open pages: is this session still good, and which team does it have now?

    Never extends the session (see auth.OPEN_ENDPOINTS): a page asking is not a person using it.
    """
    if g.user is None:
        return jsonify(active=False, reason=g.get("session_ended") or "signed-out"), 401
    return jsonify(active=True, subtenant=session.get("subtenant"))


@bp.route("/brand.css")
def brand_css():
    """The partner's colour as a stylesheet: the CSP allows no inline styles."""
    color = current_app.config["GATEWAY_BRAND_COLOR"]
    response = current_app.response_class(f":root {{ --brand: {color}; }}\n", mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.route("/select", methods=("GET", "POST"))
@login_required
def select():
    matches = user_matches()
    if not matches:
        raise NotLinked("user matches no subtenant rule")
    if request.method == "POST":
        security.require_csrf()
        choice = request.form.get("subtenant", "")
        match = next((m for m in matches if m.key == choice), None)
        if match is None:
            # Not one of theirs: refused the same way as having no link at all.
            audit.event("subtenant_denied", email=g.user.email, reason="selected a subtenant not matched")
            raise NotLinked("selected a subtenant the user does not match")
        session["subtenant"] = choice
        audit.event("subtenant_resolved", email=g.user.email, subtenant=choice, rule=match.reason,
                    how="selected")
        return redirect(url_for("embed.index"))
    return render_template("select.html", user=g.user, matches=matches,
                           current=session.get("subtenant"))

