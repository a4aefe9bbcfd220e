"""Per-session stand-ins for the token, and the team a request's placeholder binds it to.

The dashboard echoes its token into pages and scripts; on the way out every
occurrence becomes this user's placeholder for the subtenant. A placeholder
is never swapped back into anything the browser sends: the gateway itself puts
the real token in its one designated place (the ``token`` query parameter or
the ``Authorization`` header). A placeholder only tells which of the user's
subtenants the page was rendered for.
"""
from __future__ import annotations

import hashlib
import hmac
import re

from flask import current_app, request, session

from gateway.errors import NotLinked

PLACEHOLDER = re.compile(r"zgtoken-[0-9a-f]{32}")


def placeholder_for(key: str) -> str:
    """This user's stand-in for subtenant ``key``'s token; stable across token renewals.

    Derived (HMAC of the user's identity and the subtenant, keyed by our secret), so
    nothing is stored and no one can make one for another user; the same for every
    session of the user, so an open page keeps working when its session is re-created
    (an identity proxy's next request, a store outage); different for each subtenant,
    so a page keeps talking to the team it was rendered for even after another tab
    switches the session to another team.
    """
    who = session.get("subject") or session["email"]
    return current_app.extensions["placeholders"].get_or_make((who, key), lambda: "zgtoken-" + hmac.new(
        current_app.config["SECRET_KEY"].encode(), f"{who}|{key}".encode(), hashlib.sha256).hexdigest()[:32])


def bound_match(matches):
    """The subtenant a request's placeholder names (its page was rendered for it), if any."""
    found = PLACEHOLDER.search(request.environ.get("QUERY_STRING", "")) or \
        PLACEHOLDER.search(request.path) or PLACEHOLDER.search(request.headers.get("Authorization", ""))
    if not found:
        return None
    for match in matches:
        if hmac.compare_digest(placeholder_for(match.key), found.group(0)):
            return match
    # Forged, from another session, or for a team the user no longer belongs to.
    raise NotLinked("placeholder names no subtenant of this user")
