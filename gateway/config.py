"""Every setting the gateway reads: name, default, meaning and validation.

This is the only module (with the app factory) that looks at the environment.
Each setting is an environment variable; the README's settings table is the
same list. ``load`` turns a mapping of strings into typed values and raises
``ConfigError`` with one line a platform engineer can act on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

# ConfigError and redact_url are imported from here by the rest of the gateway.
from gateway.parsers import (  # noqa: F401
    ConfigError, parse_bool, parse_brand_color, parse_cache_url, parse_choice,
    parse_claim_names, parse_dashboard_url, parse_fallback_keys, parse_frame_ancestors,
    parse_header_name, parse_header_names, parse_help_url, parse_http_url, parse_logo_url,
    parse_logout_url, parse_networks, parse_non_empty, parse_non_negative_float,
    parse_non_negative_int, parse_optional_secret, parse_optional_url, parse_positive_float,
    parse_positive_int, parse_samesite, parse_secret, parse_token_in, redact_url,
)


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
            parse_non_empty, required=True, secret=True),
    Setting("ZIPTEAMS_API_SECRET", None, "Partner API secret from Zipteams onboarding.",
            parse_non_empty, required=True, secret=True),
    Setting("ZIPTEAMS_API_URL", "https://api.zipteams.com/api/v1",
            "Base URL of the Zipteams API; the token endpoint is /partner/dashboard/auth/token under it.",
            parse_http_url),
    Setting("ZIPTEAMS_DASHBOARD_URL", "https://insights.zipteams.com/dashboard/",
            "Base URL of the Zipteams Insights dashboard (confirm it with your Zipteams contact).",
            parse_dashboard_url),
    Setting("ZIPTEAMS_TIMEOUT", "10",
            "Seconds to wait for Zipteams to accept the connection, and again for its answer (for each "
            "read; a token request, and under gevent a proxied call's answer head, get twice this in all).",
            parse_positive_float),
    Setting("GATEWAY_SECRET_KEY", None,
            "Signs the session cookie. At least 32 random characters; keep it identical on every instance.",
            parse_secret(32), required=True, secret=True),
    Setting("GATEWAY_TENANTS_FILE", None, "Path of the TOML file with the subtenant rules.",
            parse_non_empty, required=True),
    Setting("GATEWAY_AUTH_MODE", "header",
            "How users sign in: header (behind an authenticating proxy), oidc (the gateway logs them in "
            "at your IdP), jwt (hand-off from your own app), or demo (demo only).",
            parse_choice("header", "oidc", "jwt", "demo")),
    Setting("GATEWAY_USER_HEADER", "X-Forwarded-Email",
            "Header mode: request header carrying the user's email.", parse_header_name),
    Setting("GATEWAY_GROUPS_HEADER", "X-Forwarded-Groups",
            "Header mode: request header carrying the user's groups, comma-separated.", parse_header_name),
    Setting("GATEWAY_TRUSTED_PROXIES", "127.0.0.1/32,::1/128",
            "Header mode: comma-separated CIDRs of the proxies allowed to send identity headers.",
            parse_networks),
    Setting("GATEWAY_ASSERTION_HEADER", "",
            "Header mode: header carrying a signed identity JWT (e.g. X-Pomerium-Jwt-Assertion, "
            "Cf-Access-Jwt-Assertion). When set, only the verified JWT counts; plain identity headers are ignored.",
            lambda raw: parse_header_name(raw) if raw.strip() else ""),
    Setting("GATEWAY_ASSERTION_JWKS_URL", "", "Header mode: JWKS URL with the keys that sign the assertion.",
            parse_optional_url),
    Setting("GATEWAY_ASSERTION_AUDIENCE", "", "Header mode: required aud of the assertion.", str),
    Setting("GATEWAY_ASSERTION_ISSUER", "", "Header mode: required iss of the assertion.", str),
    Setting("GATEWAY_PROXY_SECRET", "",
            "Header mode: a shared secret the proxy must send in GATEWAY_PROXY_SECRET_HEADER (optional).",
            parse_optional_secret(16), secret=True),
    Setting("GATEWAY_PROXY_SECRET_HEADER", "X-Gateway-Proxy-Secret",
            "Header mode: the header that carries GATEWAY_PROXY_SECRET.", parse_header_name),
    Setting("GATEWAY_PUBLIC_URL", "",
            "The gateway's external base URL (e.g. https://insights.partner.example). Required in oidc mode: "
            "absolute URLs we generate never come from the request's Host header.", parse_optional_url),
    Setting("OIDC_ISSUER", "", "OIDC mode: your IdP's issuer URL (discovery from /.well-known/openid-configuration).",
            parse_optional_url),
    Setting("OIDC_CLIENT_ID", "", "OIDC mode: the gateway's client id at the IdP.", str),
    Setting("OIDC_CLIENT_SECRET", "", "OIDC mode: the gateway's client secret at the IdP.",
            parse_optional_secret(1), secret=True),
    Setting("OIDC_SCOPES", "openid email profile", "OIDC mode: scopes to request (must include openid).", str),
    Setting("OIDC_EMAIL_CLAIM", "email",
            "OIDC mode: claim with the user's email, or comma-separated fallbacks tried in order (e.g. "
            "email,upn). List a login name only if users cannot choose it (Entra ID: upn).",
            parse_claim_names),
    Setting("OIDC_GROUPS_CLAIM", "groups", "OIDC mode: claim with the user's groups (a list).", parse_non_empty),
    Setting("OIDC_USERINFO", "auto",
            "OIDC mode: read claims from the userinfo endpoint: auto (when the ID token lacks the email or "
            "groups claim), always, or never. The ID token wins where both have a claim; sub must match.",
            parse_choice("auto", "always", "never")),
    Setting("OIDC_LEEWAY", "120", "OIDC mode: seconds of clock difference tolerated for the ID token's "
            "iat, exp and nbf.", parse_non_negative_int),
    Setting("OIDC_CLIENT_AUTH_METHOD", "client_secret_basic",
            "OIDC mode: how the gateway authenticates at the token endpoint: client_secret_basic, "
            "client_secret_post, or private_key_jwt (with OIDC_CLIENT_KEY_FILE).",
            parse_choice("client_secret_basic", "client_secret_post", "private_key_jwt")),
    Setting("OIDC_CLIENT_KEY_FILE", "", "OIDC mode, private_key_jwt: PEM file with the gateway's private key "
            "(RSA signs RS256, EC P-256 signs ES256); register its public half at the IdP.", str),
    Setting("OIDC_CLIENT_KEY_ID", "", "OIDC mode, private_key_jwt: the key id (kid) the IdP knows the key by.", str),
    Setting("OIDC_LOGOUT_HINT", "client_id",
            "OIDC mode: how sign-out names us to the IdP's end-session endpoint: client_id, or id_token_hint "
            "(Okta requires it; the ID token is then kept in the session cookie and sent in the sign-out URL).",
            parse_choice("client_id", "id_token_hint")),
    Setting("OIDC_REQUIRE_VERIFIED_EMAIL", "true",
            "OIDC mode: refuse users whose email_verified claim is not true. Turn off only if your IdP "
            "never sends email_verified and verifies every address itself; otherwise anyone who can "
            "register an unverified address at your domain gets that domain's team.", parse_bool),
    Setting("GATEWAY_HANDOFF_SECRET", "",
            "JWT mode: shared secret for HS256 hand-off tokens (at least 32 characters).",
            parse_optional_secret(32), secret=True),
    Setting("GATEWAY_HANDOFF_JWKS_URL", "",
            "JWT mode: JWKS URL with your app's public keys for RS256/ES256 hand-off tokens.", parse_optional_url),
    Setting("GATEWAY_HANDOFF_AUDIENCE", "", "JWT mode: required aud of hand-off tokens.", str),
    Setting("GATEWAY_HANDOFF_ISSUER", "", "JWT mode: required iss of hand-off tokens.", str),
    Setting("GATEWAY_SESSION_IDLE", "1800",
            "Seconds without a person's activity (a page, a form, or the embed page's activity signal; the "
            "dashboard's own polling does not count) after which a session ends.",
            parse_positive_int),
    Setting("GATEWAY_SESSION_MAX", "43200", "Seconds after sign-in at which a session ends regardless.",
            parse_positive_int),
    Setting("GATEWAY_SECRET_KEY_FALLBACKS", "",
            "Previous GATEWAY_SECRET_KEY values, comma-separated, still accepted for existing sessions "
            "during a key rotation.", parse_fallback_keys, secret=True),
    Setting("GATEWAY_COOKIE_SAMESITE", "Lax",
            "SameSite of the session cookie: Lax, Strict, or None (with Partitioned) when your site frames the gateway.",
            parse_samesite),
    Setting("GATEWAY_STATE_DIR", "",
            "Without Redis: private directory (made 0700; files 0600) holding the SQLite store this host's workers "
            "share for logout revocations and single-use hand-off ids. Empty: instance/ in the gateway's own "
            "directory (Flask's instance folder). Start-up is refused if it or a store file is a symlink, another "
            "user's, or open to group or others, or if a directory above it lets another user replace it. With Redis "
            "(GATEWAY_CACHE_URL), Redis holds them. Under gunicorn it also holds the Prometheus samples of the "
            "workers (metrics-<master pid>/, removed on exit) unless PROMETHEUS_MULTIPROC_DIR is set.",
            str),
    Setting("GATEWAY_BRAND_NAME", "Zipteams Insights", "Name shown in the page header and titles.",
            lambda raw: raw.strip()[:60] or "Zipteams Insights"),
    Setting("GATEWAY_BRAND_LOGO_URL", "",
            "Logo in the page header: an https:// URL or a path on this site (empty: the name only).", parse_logo_url),
    Setting("GATEWAY_BRAND_COLOR", "#1f4e8c",
            "Header colour (#rrggbb); must keep white text readable (WCAG AA, 4.5:1).", parse_brand_color),
    Setting("GATEWAY_LOGOUT_URL", "",
            "Where to send the browser after sign-out (e.g. your proxy's /oauth2/sign_out). Empty: a signed-out page.",
            parse_logout_url),
    Setting("GATEWAY_HELP_URL", "",
            "Your help or access-request page (http(s) URL, a path, or mailto:), linked from error pages, "
            "e.g. for a user not linked to any team. Empty: no link.", parse_help_url),
    Setting("GATEWAY_EMBED_MODE", "proxy",
            "proxy (dashboard served through the gateway, token stays on the server) or iframe (token in the iframe URL).",
            parse_choice("proxy", "iframe")),
    Setting("GATEWAY_FRAME_ANCESTORS", "'self'",
            "CSP frame-ancestors sources allowed to frame the gateway's pages.", parse_frame_ancestors),
    Setting("GATEWAY_PROXY_TOKEN_IN", "query:token",
            "Proxy mode: how the token is attached upstream: query:token or header:Authorization (Bearer).",
            parse_token_in),
    Setting("GATEWAY_PROXY_MAX_BODY", "10485760",
            "Proxy mode: largest request body forwarded to the dashboard, in bytes; larger gets 413.",
            parse_positive_int),
    Setting("GATEWAY_PROXY_FORWARD_HEADERS", "",
            "Proxy mode: extra request header names, comma-separated, forwarded to the dashboard besides the "
            "built-in allow-list (see SECURITY.md). Identity, assertion, secret and cookie headers are refused.",
            parse_header_names),
    Setting("ZIPTEAMS_MAX_RPM", "auto",
            "Most token requests per minute sent to Zipteams: by every worker of every instance together "
            "through Redis; without Redis (or while it does not answer) each of the WEB_CONCURRENCY workers "
            "may send its own share, this divided by WEB_CONCURRENCY, rounded down, at least 1. auto: 2 per "
            "team in the rules plus 60/GATEWAY_BREAKER_COOLDOWN for the breaker's probes, per fetching process "
            "(every worker without Redis, one with it), at least 30; see Protecting Zipteams. "
            "A number wins over auto.",
            lambda raw: "auto" if raw.strip().lower() == "auto" else parse_positive_int(raw)),
    Setting("ZIPTEAMS_RETRIES", "2",
            "Retries, with backoff and jitter, after a connection error or a 5xx from Zipteams.",
            parse_non_negative_int),
    Setting("ZIPTEAMS_DEADLINE", "20",
            "Seconds a token request may take in all, retries included.", parse_positive_float),
    Setting("GATEWAY_BREAKER_FAILURES", "5",
            "Consecutive Zipteams failures after which token requests fail fast for a cool-down.",
            parse_positive_int),
    Setting("GATEWAY_BREAKER_COOLDOWN", "3",
            "Seconds an open breaker waits before one probe request is let through (its own background "
            "probe, or a user's), and again after each failed probe. Users fail fast meanwhile.",
            parse_positive_float),
    Setting("GATEWAY_CACHE_URL", "memory://",
            "Token cache shared by every worker and instance: memory:// (per process), redis://host:port/db, "
            "unix:///path.sock, rediss://host:port/db (TLS), redis+sentinel://host:port,host:port/<master-name>/<db> "
            "or redis+cluster://host:port,host:port (rediss+cluster:// with TLS).", parse_cache_url),
    Setting("GATEWAY_REDIS_USERNAME", "", "Redis ACL user name (instead of the URL's user-info).", str, secret=True),
    Setting("GATEWAY_REDIS_PASSWORD", "", "Redis password (instead of the URL's user-info).", str, secret=True),
    Setting("GATEWAY_REDIS_SENTINEL_PASSWORD", "",
            "redis+sentinel://: the Sentinels' own password, if they have one (the data password is separate).",
            str, secret=True),
    Setting("GATEWAY_REDIS_CA_FILE", "", "rediss://: PEM file with the CA that signed the Redis server's "
            "certificate (empty: the system's CAs).", str),
    Setting("GATEWAY_REDIS_CERT_FILE", "", "rediss://: PEM client certificate, when Redis asks for one "
            "(with GATEWAY_REDIS_KEY_FILE).", str),
    Setting("GATEWAY_REDIS_KEY_FILE", "", "rediss://: PEM private key of GATEWAY_REDIS_CERT_FILE.", str),
    Setting("GATEWAY_METRICS_ALLOW", "127.0.0.1/32,::1/128",
            "Comma-separated CIDRs allowed to read /metrics; everyone else gets 404.", parse_networks),
    Setting("GATEWAY_RULES_RELOAD", "5",
            "Seconds between checks of the tenants file for changes (0: never reload).",
            parse_non_negative_int),
    Setting("GATEWAY_COOKIE_SECURE", "true",
            "Mark the session cookie Secure (HTTPS only). Turn off only for plain-HTTP local testing.", parse_bool),
    Setting("GATEWAY_TOKEN_MARGIN", "60",
            "Seconds before a token's expiry at which it is no longer served (capped at 10% of its lifetime).",
            parse_non_negative_int),
    Setting("GATEWAY_TOKEN_CACHE_SIZE", "10000", "Most (tenant, subtenant) tokens kept per process.",
            parse_positive_int),
    Setting("GATEWAY_LOG_LEVEL", "INFO", "Log level: DEBUG, INFO, WARNING or ERROR.",
            lambda raw: parse_choice("debug", "info", "warning", "error")(raw).upper()),
    Setting("GATEWAY_LOG_FORMAT", "json", "Log line format: json (one object per line) or text.",
            parse_choice("json", "text")),
    Setting("PORT", "8000", "Port gunicorn listens on (all interfaces).", parse_positive_int),
    Setting("WEB_CONCURRENCY", "2",
            "gunicorn worker processes. Each has its own circuit breaker; without Redis each also fetches "
            "every team's token for itself, within its own share of ZIPTEAMS_MAX_RPM (auto counts them).",
            parse_positive_int),
    Setting("GATEWAY_WORKER", "gevent",
            "gunicorn worker class: gevent (each connection a greenlet, so slow clients hold no thread; "
            "the default, safe to reach directly) or gthread (threads; only behind a front that buffers "
            "requests, such as deploy/nginx.conf).", parse_choice("gevent", "gthread")),
    Setting("GATEWAY_THREADS", "8",
            "Requests one worker runs at once (gevent: the rest wait in order, after their body has "
            "arrived; gthread: its threads). At most half of them fetch or wait for a token at once; past "
            "that a first visit gets a quick 503 to retry, so users whose token is cached keep the rest.",
            parse_positive_int),
    Setting("GATEWAY_DRAIN_DELAY", "5",
            "Seconds a stopping instance keeps serving after SIGTERM with /readyz already 503, so the load "
            "balancer notices before the listener closes.", parse_non_negative_float),
    Setting("GATEWAY_GRACEFUL_TIMEOUT", "120",
            "Seconds requests in flight (large exports included) get to finish after the listener closes.",
            parse_positive_float),
    Setting("GATEWAY_HEADER_TIMEOUT", "5",
            "Seconds in all a connection gets to send a request's line and headers, the idle time before "
            "them on a kept-alive connection included (gunicorn's keepalive); a slower one is closed.",
            parse_positive_float),
    Setting("GATEWAY_BODY_TIMEOUT", "30",
            "Seconds in all a request body gets to arrive (gevent), however steadily it trickles; a "
            "slower one gets 408 (its connection then ends within GATEWAY_HEADER_TIMEOUT). The body is "
            "read before the request takes a place.",
            parse_positive_float),
    Setting("GATEWAY_BODY_BUFFER", "67108864",
            "Bytes of request bodies one worker holds at once (read ahead, or waiting for the app); a body "
            "with no room left gets a 503 to retry. At least GATEWAY_PROXY_MAX_BODY.", parse_positive_int),
    Setting("GATEWAY_CLIENT_TIMEOUT", "30",
            "Seconds one read or write on a client's connection may make no progress (an answer the "
            "client stopped reading) before the connection is closed.", parse_positive_float),
    Setting("GATEWAY_DOWNLOADS_PER_WORKER", "auto",
            "Long dashboard answers (downloads, event streams, bodies over 1 MB) one worker streams at "
            "once; more get a 503 to retry. auto: half of GATEWAY_THREADS, so short answers keep the rest.",
            lambda raw: 0 if raw.strip().lower() == "auto" else parse_positive_int(raw)),
    Setting("GATEWAY_DOWNLOADS_PER_USER", "2",
            "Long dashboard answers one user may have streaming at once, per worker.", parse_positive_int),
    Setting("GATEWAY_STARTUP_CHECK", "true",
            "Run the network checks of flask --app wsgi gateway check once at start-up (in gunicorn's master, "
            "before the workers start; a few seconds at most) and log a WARNING per failure; start-up goes on "
            "either way. Costs one token request per start.", parse_bool),
    Setting("GATEWAY_DEBUG", "false",
            "Development only: allows the demo login. Never set it in production.", parse_bool),
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


class ConfigProblems(ConfigError):
    """Every setting problem found in one pass; ``problems`` lists them, the message joins them on one line."""

    def __init__(self, problems: list[str]):
        # One line: a problem's own closing full stop would sit before the "; ".
        super().__init__(problems[0] if len(problems) == 1 else "; ".join(p.rstrip(".") for p in problems))
        self.problems = list(problems)


def load(source: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Parse every setting from ``source`` (default: the process environment).

    Raises ``ConfigProblems`` naming every missing or invalid setting at once, so a
    deployer fixes them in one round instead of one per start.
    """
    source = os.environ if source is None else source
    problems = [f"{old_name} is no longer read: {instead}"
                for old_name, instead in REPLACED.items() if source.get(old_name)]
    config: dict[str, Any] = {}
    for setting in SETTINGS:
        try:
            config[setting.name] = _parsed(setting, source)
        except ConfigError as exc:
            problems.append(str(exc))
    for check in _TOGETHER:
        try:
            check(config)
        except ConfigError as exc:
            problems.extend(getattr(exc, "problems", [str(exc)]))
        except KeyError:
            pass  # one of its settings is invalid: already named above
    if problems:
        raise ConfigProblems(problems)
    return config


# Settings an earlier release read, and what replaced them.
REPLACED = {
    "GATEWAY_STATE_DB": "set GATEWAY_STATE_DIR to a directory only the gateway's user can reach "
                        "(the revocation store is created in it; see SECURITY.md)",
}


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


def _body_buffer(config: dict[str, Any]) -> None:
    if config["GATEWAY_BODY_BUFFER"] < config["GATEWAY_PROXY_MAX_BODY"]:
        raise ConfigError(f"GATEWAY_BODY_BUFFER ({config['GATEWAY_BODY_BUFFER']}) must be at least "
                          f"GATEWAY_PROXY_MAX_BODY ({config['GATEWAY_PROXY_MAX_BODY']}), or no upload could be accepted")


def _mode_needs(config: dict[str, Any]) -> None:
    mode = config["GATEWAY_AUTH_MODE"]
    need = {
        "oidc": ("OIDC_ISSUER", "OIDC_CLIENT_ID", "GATEWAY_PUBLIC_URL",
                 "OIDC_CLIENT_KEY_FILE" if config.get("OIDC_CLIENT_AUTH_METHOD") == "private_key_jwt"
                 else "OIDC_CLIENT_SECRET"),
        "jwt": ("GATEWAY_HANDOFF_AUDIENCE", "GATEWAY_HANDOFF_ISSUER"),
    }.get(mode, ())
    # A setting missing from ``config`` was invalid and is named already; the others are still checked.
    missing = [f"{name} is required when GATEWAY_AUTH_MODE={mode}: {BY_NAME[name].help}"
               for name in need if name in config and not config[name]]
    if missing:
        raise ConfigProblems(missing)


def _oidc(config: dict[str, Any]) -> None:
    if config["GATEWAY_AUTH_MODE"] == "oidc" and "openid" not in config["OIDC_SCOPES"].split():
        raise ConfigError("OIDC_SCOPES must include openid")
    if (config["GATEWAY_AUTH_MODE"] == "oidc" and config["OIDC_CLIENT_AUTH_METHOD"] == "private_key_jwt"
            and config["OIDC_CLIENT_KEY_FILE"]):
        _check_private_key(config["OIDC_CLIENT_KEY_FILE"])


def _handoff(config: dict[str, Any]) -> None:
    if config["GATEWAY_AUTH_MODE"] == "jwt" and (
            bool(config["GATEWAY_HANDOFF_SECRET"]) == bool(config["GATEWAY_HANDOFF_JWKS_URL"])):
        raise ConfigError("GATEWAY_AUTH_MODE=jwt needs exactly one of GATEWAY_HANDOFF_SECRET (HS256) "
                          "or GATEWAY_HANDOFF_JWKS_URL (RS256/ES256)")


def _assertion(config: dict[str, Any]) -> None:
    if config["GATEWAY_ASSERTION_HEADER"] and not config["GATEWAY_ASSERTION_JWKS_URL"]:
        raise ConfigError("GATEWAY_ASSERTION_HEADER needs GATEWAY_ASSERTION_JWKS_URL to verify it")
    if config["GATEWAY_ASSERTION_HEADER"] and not (config["GATEWAY_ASSERTION_AUDIENCE"]
                                                   and config["GATEWAY_ASSERTION_ISSUER"]):
        raise ConfigError("GATEWAY_ASSERTION_HEADER needs GATEWAY_ASSERTION_AUDIENCE and "
                          "GATEWAY_ASSERTION_ISSUER: an assertion meant for another app must not count")


def _cookie(config: dict[str, Any]) -> None:
    if config["GATEWAY_COOKIE_SAMESITE"] == "None" and not config["GATEWAY_COOKIE_SECURE"]:
        raise ConfigError("GATEWAY_COOKIE_SAMESITE=None needs GATEWAY_COOKIE_SECURE=true (browsers require it)")


def _session(config: dict[str, Any]) -> None:
    if config["GATEWAY_SESSION_IDLE"] > config["GATEWAY_SESSION_MAX"]:
        raise ConfigError("GATEWAY_SESSION_IDLE must not be longer than GATEWAY_SESSION_MAX")


def _redis(config: dict[str, Any]) -> None:
    problems = redis_problems(config)
    if problems:
        raise ConfigProblems(problems)


def redis_problems(config: dict[str, Any]) -> list[str]:
    """The Redis settings that contradict GATEWAY_CACHE_URL or each other (every one, in order)."""
    from gateway.redisurl import split_redis_url

    url, problems = config["GATEWAY_CACHE_URL"], []
    target = None if url == "memory://" else split_redis_url(url)
    named = [n for n in ("GATEWAY_REDIS_USERNAME", "GATEWAY_REDIS_PASSWORD", "GATEWAY_REDIS_SENTINEL_PASSWORD",
                         "GATEWAY_REDIS_CA_FILE", "GATEWAY_REDIS_CERT_FILE", "GATEWAY_REDIS_KEY_FILE") if config[n]]
    if target is None:
        return [f"{n} is set but GATEWAY_CACHE_URL is memory://: set a Redis URL or remove it" for n in named]
    for name, part in (("GATEWAY_REDIS_USERNAME", target.username), ("GATEWAY_REDIS_PASSWORD", target.password)):
        if config[name] and part is not None:
            problems.append(f"{name} and the user-info of GATEWAY_CACHE_URL {redact_url(url)!r} are both set: keep one")
    if config["GATEWAY_REDIS_SENTINEL_PASSWORD"] and target.mode != "Sentinel":
        problems.append("GATEWAY_REDIS_SENTINEL_PASSWORD is only for redis+sentinel:// URLs")
    for name in ("GATEWAY_REDIS_CA_FILE", "GATEWAY_REDIS_CERT_FILE", "GATEWAY_REDIS_KEY_FILE"):
        if config[name] and not target.tls:
            problems.append(f"{name} is only for TLS (rediss:// or rediss+cluster://), not {redact_url(url)!r}")
        elif config[name] and not os.access(config[name], os.R_OK):
            problems.append(f"{name}: cannot read {config[name]}")
    if bool(config["GATEWAY_REDIS_CERT_FILE"]) != bool(config["GATEWAY_REDIS_KEY_FILE"]):
        problems.append("GATEWAY_REDIS_CERT_FILE and GATEWAY_REDIS_KEY_FILE go together: set both or neither")
    return problems


# Settings that only make sense in combination; each runs only when its own settings are valid.
_TOGETHER = (_body_buffer, _mode_needs, _oidc, _handoff, _assertion, _cookie, _session, _redis)


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
        return parse_positive_int(raw)
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
