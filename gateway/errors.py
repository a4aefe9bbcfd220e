"""The GatewayError hierarchy and the one place that turns errors into pages.

Every failure a user can meet is a ``GatewayError`` with an HTTP status, a
stable ``code`` that scripts and the partner's page can rely on, a message in
plain words, and the next step that fits (sign in, sign out, try again). Browsers
get an HTML page, API clients (``Accept: application/json``) the same content as
JSON. Nothing here ever renders an exception's arguments, a traceback or anything
from the upstream answer; codes that name the vendor stay in JSON and logs.
"""
from __future__ import annotations

import logging
from urllib.parse import urlencode, urlsplit

from flask import Flask, current_app, g, jsonify, make_response, redirect, render_template, request
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import ClientDisconnected, HTTPException
from werkzeug.routing import RequestRedirect

from gateway.redirects import safe_next

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    """Base class: a failure with a status, a stable code and a user message."""

    status_code = 500
    code = "internal_error"
    title = "Something went wrong"
    message = "The gateway ran into a problem it did not expect."
    hint = "Try again in a moment. If it keeps happening, contact support and quote the request id."
    # The page's one button (render_error): "home" (the start page), "signin" (sign in, then
    # back to this page), "signout" (sign out, to use another account), "retry" (this page
    # again; by itself after ``retry_after`` when there is one), or None (no button).
    action = "home"
    action_text = "Back to the dashboard"

    def __init__(self, detail: str | None = None, *, retry_after: int | None = None):
        # ``detail`` is for logs and operators; it must never hold a secret or token.
        super().__init__(detail or self.message)
        self.detail = detail or self.message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r})"


class Unauthenticated(GatewayError):
    status_code = 401
    code = "not_signed_in"
    title = "You are not signed in"
    message = "We could not tell who you are, so the dashboard cannot be shown."
    hint = "Sign in through your company's login page and open this page again."
    action = "signin"
    action_text = "Sign in"


class NotLinked(GatewayError):
    status_code = 403
    code = "not_linked"
    title = "Your account is not linked to a team"
    message = "You are signed in, but your account is not linked to any team that has a dashboard here."
    hint = ("Ask your administrator to add you to a team, then reload this page. "
            "If you signed in with the wrong account, sign out and use another one.")
    action = "signout"
    action_text = "Sign out and use another account"


class TeamNotAllowed(NotLinked):
    code = "team_not_allowed"
    title = "This team's dashboard is not open to you"
    message = "The address names a team your account is not linked to."
    hint = "Open your own dashboard instead, or ask your administrator for access to that team."
    action = "home"
    action_text = "Open your dashboard"


class CsrfRejected(GatewayError):
    status_code = 403
    code = "csrf_rejected"
    title = "This request was refused"
    message = "The form you sent did not come from this site, or the page was open too long."
    hint = "Go back, reload the page and try again."


class BadRequestBody(GatewayError):
    status_code = 400
    code = "bad_request_body"
    title = "The request could not be read"
    message = "The data sent with this request was cut off or malformed."
    hint = "Go back, reload the page and try again."


class ChoiceNeeded(GatewayError):
    status_code = 409
    code = "choose_team"
    title = "Choose a team first"
    message = "Your account is linked to several teams and none is chosen for this page yet."
    hint = "Open the dashboard page again and choose a team."


class NotFound(GatewayError):
    status_code = 404
    code = "not_found"
    title = "Page not found"
    message = "There is nothing at this address."
    hint = "Check the address, or go back to the dashboard."


class PayloadTooLarge(GatewayError):
    status_code = 413
    code = "payload_too_large"
    title = "That upload is too large"
    message = "The data you sent is larger than this gateway accepts."
    hint = "Send a smaller file or fewer rows."


class ServiceBusy(GatewayError):
    status_code = 503
    code = "dashboard_busy"
    title = "The dashboard is busy"
    message = "The dashboard service asked us to slow down."
    hint = "Try again once the wait is over."
    action = "retry"
    action_text = "Try again"  # unavailable until the wait is over (gateway.js), as the hint says


class UpstreamFailure(GatewayError):
    status_code = 502
    code = "dashboard_unavailable"
    title = "The dashboard is unavailable"
    message = "The dashboard service did not answer properly."
    hint = "Try again in a few minutes. If it keeps happening, contact support and quote the request id."
    action = "retry"
    action_text = "Try again"


class UpstreamTimeout(GatewayError):
    status_code = 504
    code = "dashboard_timeout"
    title = "The dashboard took too long"
    message = "The dashboard service did not answer in time."
    hint = "Try again in a minute."
    action = "retry"
    action_text = "Try again"


# Generic werkzeug errors, rendered in the same shape; never their own text.
_HTTP_TEXT = {
    400: ("Bad request", "The request could not be understood.", "Go back and try again."),
    404: (NotFound.title, NotFound.message, NotFound.hint),
    405: ("Not allowed", "This address does not accept that kind of request.", "Go back to the dashboard."),
    413: (PayloadTooLarge.title, PayloadTooLarge.message, PayloadTooLarge.hint),
    431: ("Request too large", "The request's headers are too large.", "Clear this site's cookies and try again."),
}


def wants_json() -> bool:
    """True when the client prefers JSON over HTML."""
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


# Codes that name the vendor stay in JSON answers and logs; the page of a white-labelled
# gateway carries the nearest general one instead (zipteams_rate_limited -> dashboard_busy).
_VENDOR_CODE = "zipteams_"
# Sign-in flows carry one-time credentials in their query (an authorization code, a
# hand-off JWT): a link on a page never repeats them.
_NO_REPEAT = ("auth.", "oidc.")
# Answers a script reads, or that fill the embed page's frame: nobody opens them as a page,
# so signing in again returns to the start page instead, and they carry no account header.
_SCRIPTS = ("proxy.", "embed.renew_frame", "embed.session_status")
_NOT_PAGES = _NO_REPEAT + _SCRIPTS


def page_code(error: type[GatewayError]) -> str:
    """The machine-readable code an HTML page may carry: the first in the class's
    ancestry that does not name the vendor."""
    for cls in error.__mro__:
        code = cls.__dict__.get("code")
        if code and not code.startswith(_VENDOR_CODE):
            return code
    return GatewayError.code


def _again_url() -> str:
    """This request again, when it can be repeated by a link (a GET), else the start page."""
    if request.method != "GET" or request.endpoint is None or request.endpoint.startswith(_NO_REPEAT):
        return "/"
    return safe_next(request.full_path)


def _signin_url() -> str | None:
    """Where "Sign in" leads: a sign-in that comes back to this page and team."""
    back = _again_url()
    if request.endpoint is None or request.endpoint.startswith(_NOT_PAGES):
        back = "/"
    team = g.get("ended_team")  # the team the ended session showed (auth.load_user)
    if back == "/" and isinstance(team, str):
        back = "/?" + urlencode({"team": team})
    mode = current_app.config["GATEWAY_AUTH_MODE"]
    if mode == "jwt":
        return None  # users arrive from the partner's app; there is no sign-in here to offer
    if mode in ("demo", "oidc"):
        return current_app.jinja_env.globals["urls"]["login"] + ("" if back == "/" else "?" + urlencode({"next": back}))
    # Behind an identity-aware proxy, opening the page again is what starts a sign-in.
    return back


def render_error(status: int, code: str, title: str, message: str, hint: str,
                 retry_after: int | None = None, action: tuple[str | None, str] = ("home", "Back to the dashboard"),
                 public_code: str | None = None):
    request_id = getattr(g, "request_id", None)
    if wants_json():
        body = {"error": {"status": status, "code": code, "title": title, "message": message,
                          "hint": hint, "request_id": request_id}}
        if retry_after is not None:
            body["error"]["retry_after"] = retry_after
        response = jsonify(body)
    else:
        kind, text = action
        if kind == "signin":
            url = _signin_url()
        elif kind == "retry":
            url = _again_url()
        else:
            url = "/" if kind == "home" else None
        response = make_response(render_template(
            "error.html", status=status, code=public_code or code, title=title, message=message, hint=hint,
            retry_after=retry_after, auto_retry=retry_after is not None and kind == "retry"
            and request.method == "GET", request_id=request_id, action=kind, action_url=url, action_text=text,
            account=not (request.endpoint or "").startswith(_SCRIPTS)))
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    # The general code, for scripts that only see the headers: the embed page's probe of the
    # dashboard (a gateway failure, not the dashboard's own answer) and a partner's page.
    response.headers["X-Gateway-Error"] = public_code or code
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def handle_gateway_error(exc: GatewayError):
    level = logging.WARNING if exc.status_code >= 500 else logging.INFO
    logger.log(level, "refused status=%s code=%s detail=%s", exc.status_code, exc.code, exc.detail)
    return render_error(exc.status_code, exc.code, exc.title, exc.message, exc.hint, exc.retry_after,
                        (exc.action, exc.action_text), page_code(type(exc)))


def handle_http_exception(exc: HTTPException):
    status = exc.code or 500
    title, message, hint = _HTTP_TEXT.get(
        status, (exc.name, "The request could not be completed.", "Go back to the dashboard."))
    return render_error(status, f"http_{status}", title, message, hint)


def handle_unreadable_body(exc: Exception):
    # gunicorn raises its parse errors (a bad chunk size, extension or terminator) from
    # wsgi.input while the app reads the body; werkzeug raises ClientDisconnected.
    return handle_gateway_error(BadRequestBody(f"unreadable request body ({type(exc).__name__})"))


def relative_routing_redirect():
    """Answer werkzeug's routing redirects (``/dashboard`` -> ``/dashboard/``) with a relative Location.

    werkzeug builds them as absolute URLs from the Host header, and Flask sends them
    without calling error handlers, so a forged Host would name the redirect's target.
    """
    exc = request.routing_exception
    if not isinstance(exc, RequestRedirect):
        return None
    parts = urlsplit(exc.new_url)
    # One leading slash: "//host" would be read as another site.
    target = "/" + parts.path.lstrip("/") + (f"?{parts.query}" if parts.query else "")
    return redirect(target, exc.code)


def handle_unexpected(exc: Exception):
    # The traceback goes to the log for the operator; the user sees a plain page.
    logger.exception("unexpected error")
    base = GatewayError
    return render_error(500, base.code, base.title, base.message, base.hint, action=("retry", "Try again"))


def init_app(app: Flask) -> None:
    app.register_error_handler(GatewayError, handle_gateway_error)
    for unreadable in (ParseException, NoMoreData, ClientDisconnected):
        app.register_error_handler(unreadable, handle_unreadable_body)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
    app.before_request(relative_routing_redirect)
