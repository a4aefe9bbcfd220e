"""Reading a dashboard token's claims (its team, issue and expiry times) without a signature check.

We hold no vendor key, so the claims are read, never verified: base64url and JSON (RFC 7519,
section 7.2, without the signature check), refusing what PyJWT's unverified decode refuses, and
tested against it (test_zipteams.py). Not PyJWT itself here: importing it loads cryptography's
bindings, about 9 MB in every worker that never verifies a signature (docs/performance.md, "Memory").
"""
from __future__ import annotations

import base64
import binascii
import json
import re

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_SUPPORTED_CRITICAL = frozenset({"b64"})


def unverified_claims(value: str) -> dict | None:
    """A compact JWT's claims, read without checking its signature; None if it is not one."""
    parts = value.split(".")
    if len(parts) != 3:
        return None
    try:
        header, claims = (json.loads(_segment(part)) for part in parts[:2])
        _segment(parts[2])  # unchecked, but it must be there to be read
    except (ValueError, binascii.Error, RecursionError):  # bad base64, not UTF-8, not JSON, too deep
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    if header.get("b64", True) is False or not isinstance(header.get("kid", ""), str):
        return None  # a detached payload is none to read; PyJWT refuses a kid that is not a string
    if "crit" in header and not _critical_understood(header):
        return None
    return claims


def _critical_understood(header: dict) -> bool:
    """RFC 7515, 4.1.11, as PyJWT applies it: ``crit`` a non-empty list of extensions we support
    ("b64", which PyJWT knows, and a detached payload is refused above), each present in the header."""
    crit = header["crit"]
    return isinstance(crit, list) and bool(crit) and all(
        isinstance(name, str) and name in _SUPPORTED_CRITICAL and name in header for name in crit)


def _segment(part: str) -> bytes:
    """One segment, canonical base64url only, as PyJWT reads it (at most two "=" of padding)."""
    bare = part.rstrip("=")
    if len(part) - len(bare) > 2 or (bare != part and len(part) % 4) or len(bare) % 4 == 1 \
            or not _BASE64URL.fullmatch(bare):
        raise ValueError("not a base64url segment")
    data = base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != bare:
        raise ValueError("not a canonical base64url segment")
    return data
