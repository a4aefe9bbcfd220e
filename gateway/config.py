"""Every setting the gateway reads: name, default, meaning and validation.

This is the only module (with the app factory) that looks at the environment.
Each setting is an environment variable; the README's settings table is the
same list. ``load`` turns a mapping of strings into typed values and raises
``ConfigError`` with one line a platform engineer can act on.
"""
from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting is missing or invalid. The message is one line, safe to print."""


# Everything between "scheme://" (or the start) and the last "@": greedy on purpose,
# so a password with an unescaped "/", "?" or "@" in it is hidden whole as well.
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?.*@", re.DOTALL)


def redact_url(value: str) -> str:
    """``value`` with any user-info (``user:password@``) replaced by ``***@``.

    For every URL that goes into an error message, a log line or a repr: a
    Redis URL's password, or credentials someone put where they do not belong.
    """
    return _USERINFO.sub(lambda m: (m.group(1) or "") + "***@", value, count=1) if "@" in value else value


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a number greater than 0")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


def _http_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return raw.strip().rstrip("/")


def _dashboard_url(raw: str) -> str:
    # Kept with its trailing slash: the proxy forwards /dashboard/<path> under it.
    return _http_url(raw) + "/"


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


def _networks(raw: str) -> tuple:
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


def _secret(min_length: int) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        # Deliberately never echo the value back in the error.
        if len(raw) < min_length:
            raise ValueError(f"must be at least {min_length} characters long")
        return raw

    return parse


def _optional_secret(min_length: int) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw and len(raw) < min_length:
            raise ValueError(f"must be at least {min_length} characters long")
        return raw

    return parse


def _fallback_keys(raw: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if any(len(k) < 32 for k in keys):
        raise ValueError("every key must be at least 32 characters long")
    return keys


def _optional_url(raw: str) -> str:
    return _http_url(raw) if raw.strip() else ""


def _samesite(raw: str) -> str:
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


def _brand_color(raw: str) -> str:
    value = raw.strip().lower()
    if not re.fullmatch(r"#[0-9a-f]{6}", value):
        raise ValueError("must be a colour like #1f4e8c")
    # The header shows white text on this colour: WCAG 2.1 AA asks for 4.5:1.
    contrast = 1.05 / (_luminance(value) + 0.05)
    if contrast < 4.5:
        raise ValueError(f"is too light for white text (contrast {contrast:.1f}:1, WCAG AA needs 4.5:1)")
    return value


def _logo_url(raw: str) -> str:
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


def _logout_url(raw: str) -> str:
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


def _help_url(raw: str) -> str:
    value = raw.strip()
    if _MAILTO.fullmatch(value):
        return value
    try:
        return _logout_url(value)  # the same rules: a path here, or http(s) without credentials
    except ValueError as exc:
        reason = "must not carry credentials" if "credentials" in str(exc) else (
            "must be an http(s):// URL, a path on this site such as /help, or mailto:address")
        raise ValueError(reason) from None


def _non_empty(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


def _header_name(raw: str) -> str:
    name = raw.strip()
    if not name or any(not (c.isalnum() or c == "-") for c in name):
        raise ValueError("must be an HTTP header name (letters, digits and '-')")
    return name


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError("must be one of " + ", ".join(options))
        return value

    return parse


_FRAME_SOURCE = re.compile(r"https?://(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:\d{1,5})?")


def _frame_ancestors(raw: str) -> str:
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


def _claim_names(raw: str) -> str:
    names = [n.strip() for n in raw.split(",") if n.strip()]
    if not names or any(not re.fullmatch(r"[A-Za-z0-9_:./-]+", n) for n in names):
        raise ValueError("must be claim names, comma-separated")
    return ",".join(names)


def _header_names(raw: str) -> tuple[str, ...]:
    return tuple(_header_name(name) for name in raw.split(",") if name.strip())


def _cache_url(raw: str) -> str:
    value = raw.strip()
    if value == "memory://":
        return value
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError("must be memory:// or redis://host:port/db (rediss:// for TLS)")
    return value


def _token_in(raw: str) -> str:
    value = raw.strip()
    if value not in {"query:token", "header:Authorization"}:
        raise ValueError("must be query:token or header:Authorization")
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None
    help: str
    parse: Callable[[str], Any] = str
    required: bool = False
    secret: bool = False  # may also come from NAME_FILE, never printed


SETTINGS: tuple[Setting, ...] = (
    Setting("ZIPTEAMS_API_KEY", None, "Partner API key from Zipteams onboarding.",
            _non_empty, required=True, secret=True),
    Setting("ZIPTEAMS_API_SECRET", None, "Partner API secret from Zipteams onboarding.",
            _non_empty, required=True, secret=True),
    Setting("ZIPTEAMS_API_URL", "https://api.zipteams.com/api/v1",
            "Base URL of the Zipteams API; the token endpoint is /partner/dashboard/auth/token under it.",
            _http_url),
    Setting("ZIPTEAMS_DASHBOARD_URL", "https://insights.zipteams.com/dashboard/",
            "Base URL of the Zipteams Insights dashboard (confirm it with your Zipteams contact).",
            _dashboard_url),
    Setting("ZIPTEAMS_TIMEOUT", "10",
            "Seconds to wait for Zipteams to accept the connection, and again for its answer.",
            _positive_float),
    Setting("GATEWAY_SECRET_KEY", None,
            "Signs the session cookie. At least 32 random characters; keep it identical on every instance.",
            _secret(32), required=True, secret=True),
    Setting("GATEWAY_TENANTS_FILE", None, "Path of the TOML file with the subtenant rules.",
            _non_empty, required=True),
    Setting("GATEWAY_AUTH_MODE", "header",
            "How users sign in: header (behind an authenticating proxy), oidc (the gateway logs them in "
            "at your IdP), jwt (hand-off from your own app), or demo (demo only).",
            _choice("header", "oidc", "jwt", "demo")),
    Setting("GATEWAY_USER_HEADER", "X-Forwarded-Email",
            "Header mode: request header carrying the user's email.", _header_name),
    Setting("GATEWAY_GROUPS_HEADER", "X-Forwarded-Groups",
            "Header mode: request header carrying the user's groups, comma-separated.", _header_name),
    Setting("GATEWAY_TRUSTED_PROXIES", "127.0.0.1/32,::1/128",
            "Header mode: comma-separated CIDRs of the proxies allowed to send identity headers.",
            _networks),
    Setting("GATEWAY_ASSERTION_HEADER", "",
            "Header mode: header carrying a signed identity JWT (e.g. X-Pomerium-Jwt-Assertion, "
            "Cf-Access-Jwt-Assertion). When set, only the verified JWT counts; plain identity headers are ignored.",
            lambda raw: _header_name(raw) if raw.strip() else ""),
    Setting("GATEWAY_ASSERTION_JWKS_URL", "", "Header mode: JWKS URL with the keys that sign the assertion.",
            _optional_url),
    Setting("GATEWAY_ASSERTION_AUDIENCE", "", "Header mode: required aud of the assertion.", str),
    Setting("GATEWAY_ASSERTION_ISSUER", "", "Header mode: required iss of the assertion.", str),
    Setting("GATEWAY_PROXY_SECRET", "",
            "Header mode: a shared secret the proxy must send in GATEWAY_PROXY_SECRET_HEADER (optional).",
            _optional_secret(16), secret=True),
    Setting("GATEWAY_PROXY_SECRET_HEADER", "X-Gateway-Proxy-Secret",
            "Header mode: the header that carries GATEWAY_PROXY_SECRET.", _header_name),
    Setting("GATEWAY_PUBLIC_URL", "",
            "The gateway's external base URL (e.g. https://insights.partner.example). Required in oidc mode: "
            "absolute URLs we generate never come from the request's Host header.", _optional_url),
    Setting("OIDC_ISSUER", "", "OIDC mode: your IdP's issuer URL (discovery from /.well-known/openid-configuration).",
            _optional_url),
    Setting("OIDC_CLIENT_ID", "", "OIDC mode: the gateway's client id at the IdP.", str),
    Setting("OIDC_CLIENT_SECRET", "", "OIDC mode: the gateway's client secret at the IdP.",
            _optional_secret(1), secret=True),
    Setting("OIDC_SCOPES", "openid email profile", "OIDC mode: scopes to request (must include openid).", str),
    Setting("OIDC_EMAIL_CLAIM", "email",
            "OIDC mode: claim with the user's email, or comma-separated fallbacks tried in order (e.g. "
            "email,upn). List a login name only if users cannot choose it (Entra ID: upn).",
            _claim_names),
    Setting("OIDC_GROUPS_CLAIM", "groups", "OIDC mode: claim with the user's groups (a list).", _non_empty),
    Setting("OIDC_USERINFO", "auto",
            "OIDC mode: read claims from the userinfo endpoint: auto (when the ID token lacks the email or "
            "groups claim), always, or never. The ID token wins where both have a claim; sub must match.",
            _choice("auto", "always", "never")),
    Setting("OIDC_LEEWAY", "120", "OIDC mode: seconds of clock difference tolerated for the ID token's "
            "iat, exp and nbf.", _non_negative_int),
    Setting("OIDC_CLIENT_AUTH_METHOD", "client_secret_basic",
            "OIDC mode: how the gateway authenticates at the token endpoint: client_secret_basic, "
            "client_secret_post, or private_key_jwt (with OIDC_CLIENT_KEY_FILE).",
            _choice("client_secret_basic", "client_secret_post", "private_key_jwt")),
    Setting("OIDC_CLIENT_KEY_FILE", "", "OIDC mode, private_key_jwt: PEM file with the gateway's private key "
            "(RSA signs RS256, EC P-256 signs ES256); register its public half at the IdP.", str),
    Setting("OIDC_CLIENT_KEY_ID", "", "OIDC mode, private_key_jwt: the key id (kid) the IdP knows the key by.", str),
    Setting("OIDC_LOGOUT_HINT", "client_id",
            "OIDC mode: how sign-out names us to the IdP's end-session endpoint: client_id, or id_token_hint "
            "(Okta requires it; the ID token is then kept in the session cookie and sent in the sign-out URL).",
            _choice("client_id", "id_token_hint")),
    Setting("OIDC_REQUIRE_VERIFIED_EMAIL", "true",
            "OIDC mode: refuse users whose email_verified claim is not true. Turn off only if your IdP "
            "never sends email_verified and verifies every address itself; otherwise anyone who can "
            "register an unverified address at your domain gets that domain's team.", _bool),
    Setting("GATEWAY_HANDOFF_SECRET", "",
            "JWT mode: shared secret for HS256 hand-off tokens (at least 32 characters).",
            _optional_secret(32), secret=True),
    Setting("GATEWAY_HANDOFF_JWKS_URL", "",
            "JWT mode: JWKS URL with your app's public keys for RS256/ES256 hand-off tokens.", _optional_url),
    Setting("GATEWAY_HANDOFF_AUDIENCE", "", "JWT mode: required aud of hand-off tokens.", str),
    Setting("GATEWAY_HANDOFF_ISSUER", "", "JWT mode: required iss of hand-off tokens.", str),
    Setting("GATEWAY_SESSION_IDLE", "1800",
            "Seconds without a person's activity (a page, a form, or the embed page's activity signal; the "
            "dashboard's own polling does not count) after which a session ends.",
            _positive_int),
    Setting("GATEWAY_SESSION_MAX", "43200", "Seconds after sign-in at which a session ends regardless.",
            _positive_int),
    Setting("GATEWAY_SECRET_KEY_FALLBACKS", "",
            "Previous GATEWAY_SECRET_KEY values, comma-separated, still accepted for existing sessions "
            "during a key rotation.", _fallback_keys, secret=True),
    Setting("GATEWAY_COOKIE_SAMESITE", "Lax",
            "SameSite of the session cookie: Lax, Strict, or None (with Partitioned) when your site frames the gateway.",
            _samesite),
    Setting("GATEWAY_STATE_DB", "",
            "Without Redis: SQLite file shared by this host's workers for logout revocations and single-use "
            "hand-off ids (default: a file in the system temp directory). With Redis, Redis holds them.", str),
    Setting("GATEWAY_BRAND_NAME", "Zipteams Insights", "Name shown in the page header and titles.",
            lambda raw: raw.strip()[:60] or "Zipteams Insights"),
    Setting("GATEWAY_BRAND_LOGO_URL", "",
            "Logo in the page header: an https:// URL or a path on this site (empty: the name only).", _logo_url),
    Setting("GATEWAY_BRAND_COLOR", "#1f4e8c",
            "Header colour (#rrggbb); must keep white text readable (WCAG AA, 4.5:1).", _brand_color),
    Setting("GATEWAY_LOGOUT_URL", "",
            "Where to send the browser after sign-out (e.g. your proxy's /oauth2/sign_out). Empty: a signed-out page.",
            _logout_url),
    Setting("GATEWAY_HELP_URL", "",
            "Your help or access-request page (http(s) URL, a path, or mailto:), linked from error pages, "
            "e.g. for a user not linked to any team. Empty: no link.", _help_url),
    Setting("GATEWAY_EMBED_MODE", "proxy",
            "proxy (dashboard served through the gateway, token stays on the server) or iframe (token in the iframe URL).",
            _choice("proxy", "iframe")),
    Setting("GATEWAY_FRAME_ANCESTORS", "'self'",
            "CSP frame-ancestors sources allowed to frame the gateway's pages.", _frame_ancestors),
    Setting("GATEWAY_PROXY_TOKEN_IN", "query:token",
            "Proxy mode: how the token is attached upstream: query:token or header:Authorization (Bearer).",
            _token_in),
    Setting("GATEWAY_PROXY_MAX_BODY", "10485760",
            "Proxy mode: largest request body forwarded to the dashboard, in bytes; larger gets 413.",
            _positive_int),
    Setting("GATEWAY_PROXY_FORWARD_HEADERS", "",
            "Proxy mode: extra request header names, comma-separated, forwarded to the dashboard besides the "
            "built-in allow-list (see SECURITY.md). Identity, assertion, secret and cookie headers are refused.",
            _header_names),
    Setting("ZIPTEAMS_MAX_RPM", "auto",
            "Most token requests per minute sent to Zipteams: by every instance together through Redis, "
            "else by this instance's workers together. auto: 2 per team in the rules per fetching process "
            "(every worker without Redis, one with it) plus 60/GATEWAY_BREAKER_COOLDOWN for the breaker's "
            "probes, at least 30; see Protecting Zipteams. A number wins over auto.",
            lambda raw: "auto" if raw.strip().lower() == "auto" else _positive_int(raw)),
    Setting("ZIPTEAMS_RETRIES", "2",
            "Retries, with backoff and jitter, after a connection error or a 5xx from Zipteams.",
            _non_negative_int),
    Setting("ZIPTEAMS_DEADLINE", "20",
            "Seconds a token request may take in all, retries included.", _positive_float),
    Setting("GATEWAY_BREAKER_FAILURES", "5",
            "Consecutive Zipteams failures after which token requests fail fast for a cool-down.",
            _positive_int),
    Setting("GATEWAY_BREAKER_COOLDOWN", "3",
            "Seconds an open breaker waits before one probe request is let through (its own background "
            "probe, or a user's), and again after each failed probe. Users fail fast meanwhile.",
            _positive_float),
    Setting("GATEWAY_CACHE_URL", "memory://",
            "Token cache shared by every worker and instance: memory:// (per process) or "
            "redis://host:port/db.", _cache_url),
    Setting("GATEWAY_METRICS_ALLOW", "127.0.0.1/32,::1/128",
            "Comma-separated CIDRs allowed to read /metrics; everyone else gets 404.", _networks),
    Setting("GATEWAY_RULES_RELOAD", "5",
            "Seconds between checks of the tenants file for changes (0: never reload).",
            _non_negative_int),
    Setting("GATEWAY_COOKIE_SECURE", "true",
            "Mark the session cookie Secure (HTTPS only). Turn off only for plain-HTTP local testing.", _bool),
    Setting("GATEWAY_TOKEN_MARGIN", "60",
            "Seconds before a token's expiry at which it is no longer served (capped at 10% of its lifetime).",
            _non_negative_int),
    Setting("GATEWAY_TOKEN_CACHE_SIZE", "10000", "Most (tenant, subtenant) tokens kept per process.",
            _positive_int),
    Setting("GATEWAY_LOG_LEVEL", "INFO", "Log level: DEBUG, INFO, WARNING or ERROR.",
            lambda raw: _choice("debug", "info", "warning", "error")(raw).upper()),
    Setting("GATEWAY_LOG_FORMAT", "json", "Log line format: json (one object per line) or text.",
            _choice("json", "text")),
    Setting("PORT", "8000", "Port gunicorn listens on (all interfaces).", _positive_int),
    Setting("WEB_CONCURRENCY", "2",
            "gunicorn worker processes. Without Redis each fetches every team's token for itself "
            "(ZIPTEAMS_MAX_RPM=auto counts them).",
            _positive_int),
    Setting("GATEWAY_THREADS", "8",
            "Threads per gunicorn worker. At most half of them fetch or wait for a token at once; past "
            "that a first visit gets a quick 503 to retry, so users whose token is cached keep the rest.",
            _positive_int),
    Setting("GATEWAY_DRAIN_DELAY", "5",
            "Seconds a stopping instance keeps serving after SIGTERM with /readyz already 503, so the load "
            "balancer notices before the listener closes.", _non_negative_float),
    Setting("GATEWAY_GRACEFUL_TIMEOUT", "120",
            "Seconds requests in flight (large exports included) get to finish after the listener closes.",
            _positive_float),
    Setting("GATEWAY_HEADER_TIMEOUT", "10",
            "Seconds a client gets to send a request's line and headers; a slower one gets 408 and is "
            "closed. Requests are read by the worker's event loop, not a thread, until complete.",
            _positive_float),
    Setting("GATEWAY_CLIENT_TIMEOUT", "30",
            "Seconds a connection may make no progress (a request body read in place, an answer the "
            "client stopped reading) before it is closed and its thread freed.", _positive_float),
    Setting("GATEWAY_DOWNLOADS_PER_WORKER", "auto",
            "Long dashboard answers (downloads, event streams, bodies over 1 MB) one worker streams at "
            "once; more get a 503 to retry. auto: half of GATEWAY_THREADS, so short answers keep the rest.",
            lambda raw: 0 if raw.strip().lower() == "auto" else _positive_int(raw)),
    Setting("GATEWAY_DOWNLOADS_PER_USER", "2",
            "Long dashboard answers one user may have streaming at once, per worker.", _positive_int),
    Setting("GATEWAY_DEBUG", "false",
            "Development only: allows the demo login. Never set it in production.", _bool),
)

BY_NAME = {s.name: s for s in SETTINGS}


def _raw_value(setting: Setting, source: Mapping[str, str]) -> str | None:
    """The string value of a setting, reading NAME_FILE for secrets."""
    value = source.get(setting.name)
    file_name = source.get(setting.name + "_FILE") if setting.secret else None
    if value not in (None, "") and file_name:
        raise ConfigError(f"{setting.name} and {setting.name}_FILE are both set: keep one")
    if file_name:
        try:
            with open(file_name, encoding="utf-8") as fh:
                # Mounted secrets usually end with a newline that is not part of the secret.
                return fh.read().rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(
                f"{setting.name}_FILE: cannot read {file_name}: {exc.strerror or exc}"
            ) from None
    if value in (None, ""):
        return None
    return value


def load(source: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Parse every setting from ``source`` (default: the process environment)."""
    source = os.environ if source is None else source
    config = {setting.name: _parsed(setting, source) for setting in SETTINGS}
    _check_together(config)
    return config


def value(name: str, source: Mapping[str, str] | None = None) -> Any:
    """One setting, parsed and checked as ``load`` does (for gunicorn's logger, before the app exists)."""
    [setting] = [s for s in SETTINGS if s.name == name]
    return _parsed(setting, os.environ if source is None else source)


def _parsed(setting: Setting, source: Mapping[str, str]) -> Any:
    raw = _raw_value(setting, source)
    if raw is None:
        if setting.required:
            hint = f" (or {setting.name}_FILE)" if setting.secret else ""
            raise ConfigError(f"{setting.name}{hint} is required: {setting.help}")
        raw = setting.default
    try:
        return setting.parse(raw)
    except ValueError as exc:
        shown = "" if setting.secret else f" {redact_url(raw)!r}"
        # The reason may quote the value too (urlsplit and int() do).
        raise ConfigError(f"{setting.name}{shown} is invalid: {redact_url(str(exc))}") from None


def environment_settings(source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings the environment sets, as strings (secrets' NAME_FILE too), unparsed.

    For ``python -m gateway demo``, which lays its stand-in's settings over them.
    """
    source = os.environ if source is None else source
    names = [s.name for s in SETTINGS] + [s.name + "_FILE" for s in SETTINGS if s.secret]
    return {name: source[name] for name in names if name in source}


def _check_together(config: dict[str, Any]) -> None:
    """Settings that only make sense in combination."""
    mode = config["GATEWAY_AUTH_MODE"]
    need = {
        "oidc": ("OIDC_ISSUER", "OIDC_CLIENT_ID", "GATEWAY_PUBLIC_URL",
                 "OIDC_CLIENT_KEY_FILE" if config["OIDC_CLIENT_AUTH_METHOD"] == "private_key_jwt"
                 else "OIDC_CLIENT_SECRET"),
        "jwt": ("GATEWAY_HANDOFF_AUDIENCE", "GATEWAY_HANDOFF_ISSUER"),
    }.get(mode, ())
    for name in need:
        if not config[name]:
            raise ConfigError(f"{name} is required when GATEWAY_AUTH_MODE={mode}: {BY_NAME[name].help}")
    if mode == "oidc" and "openid" not in config["OIDC_SCOPES"].split():
        raise ConfigError("OIDC_SCOPES must include openid")
    if mode == "oidc" and config["OIDC_CLIENT_AUTH_METHOD"] == "private_key_jwt":
        _check_private_key(config["OIDC_CLIENT_KEY_FILE"])
    if mode == "jwt" and bool(config["GATEWAY_HANDOFF_SECRET"]) == bool(config["GATEWAY_HANDOFF_JWKS_URL"]):
        raise ConfigError("GATEWAY_AUTH_MODE=jwt needs exactly one of GATEWAY_HANDOFF_SECRET (HS256) "
                          "or GATEWAY_HANDOFF_JWKS_URL (RS256/ES256)")
    if config["GATEWAY_ASSERTION_HEADER"] and not config["GATEWAY_ASSERTION_JWKS_URL"]:
        raise ConfigError("GATEWAY_ASSERTION_HEADER needs GATEWAY_ASSERTION_JWKS_URL to verify it")
    if config["GATEWAY_ASSERTION_HEADER"] and not (config["GATEWAY_ASSERTION_AUDIENCE"]
                                                   and config["GATEWAY_ASSERTION_ISSUER"]):
        raise ConfigError("GATEWAY_ASSERTION_HEADER needs GATEWAY_ASSERTION_AUDIENCE and "
                          "GATEWAY_ASSERTION_ISSUER: an assertion meant for another app must not count")
    if config["GATEWAY_COOKIE_SAMESITE"] == "None" and not config["GATEWAY_COOKIE_SECURE"]:
        raise ConfigError("GATEWAY_COOKIE_SAMESITE=None needs GATEWAY_COOKIE_SECURE=true (browsers require it)")
    if config["GATEWAY_SESSION_IDLE"] > config["GATEWAY_SESSION_MAX"]:
        raise ConfigError("GATEWAY_SESSION_IDLE must not be longer than GATEWAY_SESSION_MAX")


def _check_private_key(path: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        with open(path, "rb") as fh:
            key = load_pem_private_key(fh.read(), password=None)
    except OSError as exc:
        raise ConfigError(f"OIDC_CLIENT_KEY_FILE: cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, TypeError):
        raise ConfigError(f"OIDC_CLIENT_KEY_FILE: {path} is not an unencrypted PEM private key") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) or (
            isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name != "secp256r1"):
        raise ConfigError("OIDC_CLIENT_KEY_FILE must hold an RSA or EC P-256 private key")


def env_int(name: str, default: int, source: Mapping[str, str] | None = None) -> int:
    """A positive integer from the environment, for gunicorn.conf.py."""
    source = os.environ if source is None else source
    raw = source.get(name) or str(default)
    try:
        return _positive_int(raw)
    except ValueError:
        raise ConfigError(f"{name} {redact_url(raw)!r} is invalid: must be a whole number, 1 or more") from None


def env_seconds(name: str, default: float, source: Mapping[str, str] | None = None) -> float:
    """Seconds (0 or more) from the environment, for gunicorn.conf.py."""
    source = os.environ if source is None else source
    raw = source.get(name) or str(default)
    try:
        value = float(raw)
        if value < 0:
            raise ValueError
        return value
    except ValueError:
        raise ConfigError(f"{name} {raw!r} is invalid: must be a number of seconds, 0 or more") from None


def markdown_table() -> str:
    """The README's settings table, generated from SETTINGS so the two cannot drift."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = "required" if s.required else (f"`{s.default}`" if s.default else "(empty)")
        also = f" Also `{s.name}_FILE`." if s.secret else ""
        rows.append(f"| `{s.name}` | {default} | {s.help}{also} |")
    return "\n".join(rows) + "\n"
