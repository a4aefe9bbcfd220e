"""The user a request is for, from whatever vouched for them: one place that turns claims
or identity headers into a ``User``, so every login mode parses them the same way."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from gateway.memo import Memo
from gateway.tenancy.rules import normalize_email


@dataclass(frozen=True)
class User:
    email: str
    groups: tuple[str, ...] = ()
    subject: str | None = None  # (issuer, sub) for OIDC users; email is for rules, not identity


class ClaimsRejected(ValueError):
    """The claims name no usable user; the message says which claim let us down, in words."""


class EmailNotVerified(ClaimsRejected):
    """The address came from the ``email`` claim, and the IdP does not say it verified it."""


def _groups(value) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return tuple(dict.fromkeys(str(x) for x in values if isinstance(x, (str, int)) and str(x)))


def user_from_claims(claims: dict, email_claims: Iterable[str], groups_claim: str,
                     subject: str | None = None, *, require_verified_email: bool = False) -> User:
    """The user verified claims name: the first email claim present, which must be one
    well-formed address (never a silent fall back to the next claim), and the groups claim.

    ``email_verified`` speaks for the ``email`` claim only; other claims are the IdP's own
    login names (OIDC_REQUIRE_VERIFIED_EMAIL)."""
    names = list(email_claims)
    for name in names:
        value = claims.get(name)
        if value in (None, ""):
            continue
        email = normalize_email(value) if isinstance(value, str) else None
        if email is None:
            raise ClaimsRejected(f"the {name} claim is not one well-formed email address")
        if name == "email" and require_verified_email and claims.get("email_verified") is not True:
            raise EmailNotVerified("email_verified is not true (OIDC_REQUIRE_VERIFIED_EMAIL)")
        return User(email, _groups(claims.get(groups_claim)), subject)
    raise ClaimsRejected(f"no well-formed email in the claims {', '.join(names)}")


# Remembered from a user's second request on: a flood of one-time visitors pushes no one out.
_from_headers = Memo(4096, admit_on_repeat=True)


def user_from_headers(email_header: str, groups_header: str) -> User | None:
    """The user a proxy's identity headers name; the same headers arrive with every request of a user."""
    return _from_headers.get_or_make((email_header, groups_header),
                                     lambda: _user_from_headers(email_header, groups_header))


def _user_from_headers(email_header: str, groups_header: str) -> User | None:
    email = normalize_email(email_header)
    if email is None:
        return None
    return User(email, _groups([x.strip() for x in groups_header.split(",")]))
