"""How a setting's string becomes a typed value: one parser per kind of setting.

Each parser raises ``ValueError`` with a reason a platform engineer can act on;
``gateway.config`` names the setting and never echoes a secret or a URL's user-info.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Callable
from urllib.parse import parse_qsl, urlsplit

from gateway.redisurl import split_redis_url


class ConfigError(ValueError):
    """A setting is missing or invalid. The message is one line, safe to print."""


# Everything between "scheme://" (or the start) and the last "@": greedy on purpose,
# so a password with an unescaped "/", "?" or "@" in it is hidden whole as well.
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?.*@", re.DOTALL)


def redact_url(value: str) -> str:
    """``value`` with any user-info (``user:password@``) replaced by ``***@`` and any query or
    fragment by ``?***``.

    For every URL that goes into an error message, a log line or a repr: a Redis URL's password
    (in its user-info, or in its query, which redis-py reads too), a signed JWKS address, or
    credentials someone put where they do not belong.
    """
    if "@" in value:
        value = _USERINFO.sub(lambda m: (m.group(1) or "") + "***@", value, count=1)
    cut = min((i for i in (value.find("?"), value.find("#")) if i >= 0), default=-1)
    return value if cut < 0 else value[:cut] + "?***"


def parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _number(kind: type, allowed: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    def parse(raw: str):
        value = kind(raw)
        if not allowed(value):
            raise ValueError(rule)
        return value
    return parse


parse_positive_float = _number(float, lambda v: v > 0, "must be a number greater than 0")
parse_non_negative_float = _number(float, lambda v: v >= 0, "must be 0 or more")
parse_non_negative_int = _number(int, lambda v: v >= 0, "must be 0 or more")
parse_positive_int = _number(int, lambda v: v >= 1, "must be 1 or more")


def parse_http_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return raw.strip().rstrip("/")


def parse_dashboard_url(raw: str) -> str:
    # Kept with its trailing slash: the proxy forwards /dashboard/<path> under it.
    return parse_http_url(raw) + "/"


class NetworkSet(tuple):
    """A tuple of IP networks whose hash is computed once (it keys a per-request cache)."""

    def __new__(cls, networks):
        self = super().__new__(cls, networks)
        self._hash = hash(tuple(str(n) for n in self))
        return self

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return tuple.__eq__(self, other)


def parse_networks(raw: str) -> tuple:
    nets = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR range") from None
    return NetworkSet(nets)


def parse_secret(min_length: int) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        # Deliberately never echo the value back in the error.
        if len(raw) < min_length:
            raise ValueError(f"must be at least {min_length} characters long")
        return raw

    return parse


def parse_optional_secret(min_length: int) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw and len(raw) < min_length:
            raise ValueError(f"must be at least {min_length} characters long")
        return raw

    return parse


def parse_fallback_keys(raw: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if any(len(k) < 32 for k in keys):
        raise ValueError("every key must be at least 32 characters long")
    return keys


def parse_optional_url(raw: str) -> str:
    return parse_http_url(raw) if raw.strip() else ""


def parse_samesite(raw: str) -> str:
    value = raw.strip().capitalize()
    if value not in ("Lax", "Strict", "None"):
        raise ValueError("must be Lax, Strict or None")
    return value


def _luminance(hex_color: str) -> float:
    def channel(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def parse_brand_color(raw: str) -> str:
    value = raw.strip().lower()
    if not re.fullmatch(r"#[0-9a-f]{6}", value):
        raise ValueError("must be a colour like #1f4e8c")
    # The header shows white text on this colour: WCAG 2.1 AA asks for 4.5:1.
    contrast = 1.05 / (_luminance(value) + 0.05)
    if contrast < 4.5:
        raise ValueError(f"is too light for white text (contrast {contrast:.1f}:1, WCAG AA needs 4.5:1)")
    return value


def parse_logo_url(raw: str) -> str:
    value = raw.strip()
    if not value:
        return ""
    if value.startswith("/") and not value.startswith("//"):
        return value
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or any(c in value for c in "\"'<> "):
        raise ValueError("must be an https:// URL or a path on this site such as /static/logo.svg")
    if "@" in parts.netloc:  # every visitor's browser would be handed the password
        raise ValueError("must not carry credentials")
    return value


def parse_logout_url(raw: str) -> str:
    value = raw.strip()
    if not value:
        return ""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain spaces or control characters")
    if value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s):// URL or a path on this site such as /oauth2/sign_out")
    if "@" in parts.netloc:  # handed to every browser that signs out
        raise ValueError("must not carry credentials")
    return value


_MAILTO = re.compile(r"mailto:[^@\s\"'<>?]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}(\?[^\s\"'<>]*)?", re.IGNORECASE)


def parse_help_url(raw: str) -> str:
    value = raw.strip()
    if _MAILTO.fullmatch(value):
        return value
    try:
        return parse_logout_url(value)  # the same rules: a path here, or http(s) without credentials
    except ValueError as exc:
        reason = "must not carry credentials" if "credentials" in str(exc) else (
            "must be an http(s):// URL, a path on this site such as /help, or mailto:address")
        raise ValueError(reason) from None


def parse_non_empty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def parse_header_name(raw: str) -> str:
    name = raw.strip()
    if not name or any(not (c.isalnum() or c == "-") for c in name):
        raise ValueError("must be an HTTP header name (letters, digits and '-')")
    return name


def parse_choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError("must be one of " + ", ".join(options))
        return value

    return parse


_FRAME_SOURCE = re.compile(r"https?://(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:\d{1,5})?")


def parse_frame_ancestors(raw: str) -> str:
    value = " ".join(raw.split())
    if not value:
        raise ValueError("must not be empty (use 'none' to forbid framing)")
    # These end up inside a CSP header: refuse anything that could start a new directive.
    if any(c in value for c in ";,\r\n"):
        raise ValueError("must be a space-separated list of CSP sources")
    # Exact origins (or one wildcard label) only: "*", a bare scheme ("https:") or data:/blob:
    # would let any site frame the dashboard, and the SDK could not tell the partner so.
    for source in value.split():
        if source.lower() not in ("'self'", "'none'") and not _FRAME_SOURCE.fullmatch(source):
            raise ValueError(f"must list 'self', 'none' or exact origins such as https://app.partner.example "
                             f"(one leading *. label allowed), not {source[:60]!r}")
    return value


def parse_claim_names(raw: str) -> str:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if not names or any(not re.fullmatch(r"[A-Za-z0-9_:./-]+", n) for n in names):
        raise ValueError("must be claim names, comma-separated")
    return ",".join(names)


def parse_header_names(raw: str) -> tuple[str, ...]:
    return tuple(parse_header_name(name) for name in raw.split(",") if name.strip())


def parse_cache_url(raw: str) -> str:
    value = raw.strip()
    if value != "memory://":
        split_redis_url(value)
        query = urlsplit(value).query
        # redis-py reads a query too: a password there would be shown wherever the URL is, and
        # ssl_cert_reqs=none would turn the certificate check off unseen. Only unix://'s db.
        if query and not (value.startswith("unix://") and all(k == "db" for k, _ in parse_qsl(query))):
            raise ValueError("must not have a query (unix:// may have ?db=N): give the password, user "
                             "and TLS files as GATEWAY_REDIS_* settings")
    return value


def parse_token_in(raw: str) -> str:
    value = raw.strip()
    if value not in {"query:token", "header:Authorization"}:
        raise ValueError("must be query:token or header:Authorization")
    return value
