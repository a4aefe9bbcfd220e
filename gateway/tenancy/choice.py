"""Which one of a user's teams a request is for: decided on every request from the tenant
rules, never from anything the browser says alone.

The session only remembers the user's choice among the subtenants they match, and an
address's ``?team=`` is rechecked like everything else, so nothing a browser sends can
reach another team. Deny by default: no match, no team.
"""
from __future__ import annotations

from flask import current_app, g, session

from gateway.errors import NotLinked, TeamNotAllowed
from gateway.ops import audit
from gateway.tenancy.rules import Match


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


def requested_match(team: str | None) -> Match:
    """The team a page is for: the one its address names (``?team=``), else the session's.

    The address is rechecked against the rules like everything else: a team the user is
    not linked to is refused, never shown and never silently replaced by another.
    """
    if team is None:
        return current_subtenant()
    matches = user_matches()
    if not matches:
        raise NotLinked("user matches no subtenant rule")
    match = next((m for m in matches if m.key == team), None)
    if match is None:
        audit.event("subtenant_denied", email=g.user.email, reason="team in the address not matched")
        raise TeamNotAllowed("team in the address is not one of the user's")
    g.subtenant_match = match
    return match
