"""The embed page, the team picker, and the small endpoints an open page uses (session
status, activity, frame renewal, brand and favicon). Which team a request is for comes
from ``gateway.tenancy.choice``."""
from __future__ import annotations

import logging
import re
from urllib.parse import urlencode, urlsplit

from flask import (Blueprint, abort, current_app, g, jsonify, redirect, render_template, request, session,
                   url_for)
from markupsafe import escape

from gateway import security
from gateway.delivery import loading
from gateway.delivery.proxy.health import failure_for
from gateway.delivery.proxy.placeholders import placeholder_for
from gateway.errors import NotLinked
from gateway.identity.auth import login_required
from gateway.ops import audit
from gateway.tenancy.choice import NeedsChoice, requested_match, user_matches
from gateway.tenancy.rules import Match
from gateway.tokens import cache as tokens
from gateway.tokens.client import DashboardToken

logger = logging.getLogger(__name__)
bp = Blueprint("embed", __name__)


def frame_src(match: Match, token: DashboardToken | None = None) -> tuple[str, float]:
    """The iframe's URL for this subtenant, and when the token behind it stops being served."""
    sub = match.subtenant
    app = current_app._get_current_object()
    cache = tokens.cache()
    if token is None:
        token = cache.get(sub.tenant, sub.id)
    if app.config["GATEWAY_EMBED_MODE"] == "iframe":
        src = app.config["ZIPTEAMS_DASHBOARD_URL"] + "?" + urlencode({"token": token.value})
    else:
        # The placeholder binds this frame to this subtenant, whatever other tabs choose later.
        src = app.jinja_env.globals["urls"]["dashboard"] + "?token=" + placeholder_for(match.key)
    return src, cache.serve_until(token)


@bp.route("/")
@login_required
def index():
    # "in" before indexing: werkzeug builds an exception object for every missing key .get() asks for.
    args = request.args
    try:
        match = requested_match(args["team"] if "team" in args else None)
    except NeedsChoice:
        return redirect(url_for("embed.select"))
    sub = match.subtenant
    chrome = "none" if "chrome" in args and args["chrome"] == "none" else "full"
    # Fetching here, not only in the frame, turns an upstream failure into a full error
    # page instead of a broken frame. A browser waits for it a moment only (gateway.delivery.loading).
    token = None
    if "wait" not in args and loading.is_navigation(request):
        token = loading.token_within(tokens.cache(), sub.tenant, sub.id, loading.LOADING_PAGE_AFTER)
        if token is None:
            return loading.page(match, chrome)
    src, serve_until = frame_src(match, token)
    user = g.user
    audit.event("embed_viewed", email=user.email, tenant=sub.tenant, subtenant=sub.id,
                rule=match.reason, mode=current_app.config["GATEWAY_EMBED_MODE"])
    return render_embed(user, match, src, int(serve_until), user_matches(), chrome)


# Stand-ins for what differs between the users of one team's page; each is put in per
# response, HTML-escaped, by one pass over the cached page (the end of ``render_embed``).
_MARK = {name: f"\x00{name}\x00" for name in ("email", "csrf", "src", "request-id")}
_MARKS = re.compile("\x00(" + "|".join(map(re.escape, _MARK)) + ")\x00")


class _MarkedUser:
    email = _MARK["email"]


def render_embed(user, match: Match, src: str, serve_until: int, matches: list[Match],
                 chrome: str = "full") -> str:
    """The embed page, rendered once per team and look, and filled in per response.

    The cached page is the same for every user of a team who sees the same team list;
    the user's email, CSRF token and frame address and the request id go in as marks.
    A first visit and a returning user both reuse it, and it costs one entry per team,
    not one per user. The key holds every other input of the template.
    """
    key = (match.key, match.subtenant.name, serve_until, tuple((m.key, m.subtenant.name) for m in matches), chrome)
    html = current_app.extensions["embed_pages"].get_or_make(key, lambda: render_template(
        "embed.html", user=_MarkedUser, subtenant=match.subtenant, subtenant_key=match.key,
        frame_src=_MARK["src"], serve_until=serve_until, matches=matches, request_id=_MARK["request-id"],
        csrf_token=lambda: _MARK["csrf"], chrome=chrome, hide_bar=chrome == "none",
        state=page_state(match, matches, chrome)))
    values = {"email": escape(user.email), "csrf": escape(security.ensure_csrf()), "src": escape(src),
              "request-id": escape(g.request_id)}
    return _MARKS.sub(lambda m: values[m.group(1)], html)


def page_state(match: Match, matches: list[Match], chrome: str) -> dict:
    """What the embed page's script needs to know, as JSON in the page (static/embed.js)."""
    cfg = current_app.config
    back = "/?" + urlencode({"team": match.key, **({"chrome": "none"} if chrome == "none" else {})})
    mode = cfg["GATEWAY_AUTH_MODE"]
    # "Sign in again" returns to this team (and look); hand-off users return through the partner's app.
    signin = None if mode == "jwt" else (
        current_app.jinja_env.globals["urls"]["login"] + "?" + urlencode({"next": back})
        if mode in ("demo", "oidc") else back)
    parts = urlsplit(cfg["ZIPTEAMS_DASHBOARD_URL"])
    iframe = cfg["GATEWAY_EMBED_MODE"] == "iframe"
    return {"mode": cfg["GATEWAY_EMBED_MODE"], "chrome": chrome, "signin": signin,
            "team": {"id": match.key, "name": match.subtenant.name},
            "teams": [{"id": m.key, "name": m.subtenant.name} for m in matches],
            "dashboardOrigin": f"{parts.scheme}://{parts.netloc}" if iframe else None}


@bp.route("/embed/frame")
@login_required
def renew_frame():
    """Iframe mode: a fresh dashboard URL for a long-open page, for the team it shows."""
    if current_app.config["GATEWAY_EMBED_MODE"] != "iframe":
        abort(404)
    team = request.args.get("team", request.args.get("subtenant"))
    match = next((m for m in user_matches() if m.key == team), None)
    if match is None:
        raise NotLinked("renewal for a subtenant the user does not match")
    src, serve_until = frame_src(match)
    return jsonify(src=src, serve_until=int(serve_until))


@bp.route("/session/status")
def session_status():
    """For open pages: is this session still good, which team does it have now, and (proxy
    mode, ``?team=``) did the dashboard's own calls fail lately?

    Never extends the session (auth.PASSIVE_ENDPOINTS): a page asking is not a person using it.
    """
    if g.user is None:
        return jsonify(active=False, reason=g.get("session_ended") or "signed-out"), 401
    failure = None
    team = request.args.get("team")
    if team and current_app.config["GATEWAY_EMBED_MODE"] == "proxy":
        failure = failure_for(team)  # the dashboard's calls failed lately (proxy.health)
    return jsonify(active=True, subtenant=session.get("subtenant"), dashboard=failure)


@bp.route("/session/activity", methods=("POST",))
@login_required
def session_activity():
    """The embed page saw a person use it (pointer, keys; reported at most once a minute).

    The dashboard's own traffic never renews the idle timer (auth.PASSIVE_ENDPOINTS);
    this does, in auth.load_user, as a page or a form does. CSRF-checked, so another
    site cannot keep a session alive.
    """
    security.require_csrf()
    return "", 204


@bp.route("/brand.css")
def brand_css():
    """The partner's colour as a stylesheet: the CSP allows no inline styles."""
    color = current_app.config["GATEWAY_BRAND_COLOR"]
    response = current_app.response_class(f":root {{ --brand: {color}; }}\n", mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.route("/favicon.svg")
def favicon():
    """The tab icon, in the partner's colour: ours, so no first visit meets a 404 for it."""
    color = current_app.config["GATEWAY_BRAND_COLOR"]  # validated #rrggbb: safe inside the SVG
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
           f'<rect width="32" height="32" rx="7" fill="{color}"/>'
           '<path d="M9 23v-6M14 23V9M19 23v-9M24 23v-4" stroke="#fff" stroke-width="3.4" stroke-linecap="round"/>'
           '</svg>')
    response = current_app.response_class(svg, mimetype="image/svg+xml")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.route("/favicon.ico")
def favicon_ico():
    """Browsers that ask for /favicon.ico without reading the page's icon link."""
    return redirect(current_app.jinja_env.globals["urls"]["favicon"])


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
        # Post/Redirect/Get, to an address that names the team: a reload or a copied link
        # keeps showing it, whatever another tab chooses later.
        return redirect(url_for("embed.index") + "?" + urlencode({"team": choice}), code=303)
    return render_template("select.html", user=g.user, matches=matches,
                           current=session.get("subtenant"))

