"""The Zipteams Auth Token API client: one pooled session, timeouts, typed errors.

Contract: ``../shared/spec/zipteams-auth-token-api.txt``. ``GET
{api_url}/partner/dashboard/auth/token`` with exactly the headers
``x-api-key``, ``x-api-secret``, ``x-tenant-id`` and ``x-sub-tenant-id``.
Every way the call can fail is its own exception class; none of them, and no
log line here, ever carries the partner secret or a token.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field

import requests
from requests.adapters import HTTPAdapter

from gateway import bounded
from gateway.config import redact_url
from gateway.ops import metrics
from gateway.errors import ServiceBusy, UpstreamFailure, UpstreamTimeout
from gateway.tokens.claims import unverified_claims

logger = logging.getLogger(__name__)

TOKEN_PATH = "/partner/dashboard/auth/token"
DEFAULT_RETRY_AFTER = 60
MAX_RETRY_AFTER = 3600
_RETRY_IN = re.compile(r"try again in (\d{1,6}) seconds?", re.IGNORECASE)


# ----------------------------------------------------------------- exceptions
class ZipteamsError(UpstreamFailure):
    """Base class: the token could not be obtained from Zipteams."""

    code = "zipteams_error"

    def __init__(self, detail: str, *, tenant: str | None = None, subtenant: str | None = None,
                 upstream_status: int | None = None, retry_after: int | None = None):
        where = f" (tenant={tenant!r} subtenant={subtenant!r})" if tenant is not None else ""
        super().__init__(detail + where, retry_after=retry_after)
        self.tenant = tenant
        self.subtenant = subtenant
        self.upstream_status = upstream_status


class ZipteamsBadRequest(ZipteamsError):
    """400: Zipteams says a required header was missing (a gateway bug or bad rule)."""
    code = "zipteams_bad_request"


class ZipteamsMissingTenant(ZipteamsBadRequest):
    code = "zipteams_missing_tenant"


class ZipteamsMissingSubtenant(ZipteamsBadRequest):
    code = "zipteams_missing_subtenant"


class ZipteamsForbidden(ZipteamsError):
    """403: the partner key or secret was refused."""
    code = "zipteams_forbidden"


# The page class comes first, so that its status and words are the user's;
# ZipteamsError still supplies __init__ (its tenant and subtenant).
class ZipteamsRateLimited(ServiceBusy, ZipteamsError):
    """429: too many token requests; ``retry_after`` says for how long to stop."""
    code = "zipteams_rate_limited"


class ZipteamsServerError(ZipteamsError):
    """5xx from Zipteams."""
    code = "zipteams_server_error"


class ZipteamsUnexpectedStatus(ZipteamsError):
    """A status the contract does not document."""
    code = "zipteams_unexpected_status"


class ZipteamsMalformedResponse(ZipteamsError):
    """The answer is not the documented JSON envelope (not JSON, no data.token, ...)."""
    code = "zipteams_malformed_response"


class ZipteamsInvalidToken(ZipteamsMalformedResponse):
    """data.token is not a usable JWT (not a JWT, expired, or for another subtenant)."""
    code = "zipteams_invalid_token"


class ZipteamsUnreachable(ZipteamsError):
    """The connection failed (refused, DNS, TLS, reset)."""
    code = "zipteams_unreachable"


class ZipteamsTimeout(UpstreamTimeout, ZipteamsError):
    """Zipteams did not connect or answer within the timeout."""
    code = "zipteams_timeout"


# ---------------------------------------------------------------------- token
def fingerprint(token: str) -> str:
    """A short, non-reversible name for a token, safe for logs."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DashboardToken:
    """A dashboard token and what we read from it. ``value`` never appears in repr."""

    value: str = field(repr=False)
    tenant: str
    subtenant: str
    issued_at: float
    expires_at: float

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.value)

    def __repr__(self) -> str:
        return (f"DashboardToken(tenant={self.tenant!r}, subtenant={self.subtenant!r}, "
                f"expires_at={self.expires_at:.0f}, fingerprint={self.fingerprint!r})")

    __str__ = __repr__


def parse_token(value: object, tenant: str, subtenant: str, now: float,
                default_lifetime: float = 86400) -> DashboardToken:
    """Read a token's claims without verifying its signature (we hold no vendor key)."""
    if not isinstance(value, str) or value.count(".") != 2:
        raise ZipteamsInvalidToken("data.token is not a JWT", tenant=tenant, subtenant=subtenant)
    claims = unverified_claims(value)
    if claims is None:
        raise ZipteamsInvalidToken("data.token is not a readable JWT",
                                   tenant=tenant, subtenant=subtenant) from None
    # A token minted for another pair would show one team another team's data.
    for claim, expected in (("tenantId", tenant), ("subTenantId", subtenant)):
        if claim in claims and str(claims[claim]) != expected:
            raise ZipteamsInvalidToken(f"token claim {claim} names another {claim[:-2].lower()}",
                                       tenant=tenant, subtenant=subtenant)
    try:
        issued_at = _time(claims, "iat", now)
        expires_at = _time(claims, "exp", issued_at + default_lifetime)
    except ValueError as exc:
        raise ZipteamsInvalidToken(f"token claim {exc} is not a usable time", tenant=tenant, subtenant=subtenant) from None
    if expires_at <= now:
        raise ZipteamsInvalidToken("token is already expired (check this server's clock)",
                                   tenant=tenant, subtenant=subtenant)
    return DashboardToken(value, tenant, subtenant, issued_at, expires_at)


# Seconds since 1970 a token's times may name: up to the year 9999 (datetime's, and the CLI's, limit).
_LATEST = 253402300799.0


def _time(claims: dict, name: str, fallback: float) -> float:
    """Claim ``name`` as a time; ``fallback`` if absent or not a number. ValueError (naming the claim,
    not its value) for a number no clock reaches: NaN or an infinity (JSON's reader takes them) or
    past the year 9999. A NaN never compares as expired: the token would be served, never renewed."""
    value = claims.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return fallback
    if isinstance(value, int) and abs(value) > _LATEST:  # float() of a 400-digit integer overflows
        raise ValueError(name)
    number = float(value)
    if not math.isfinite(number) or abs(number) > _LATEST:
        raise ValueError(name)
    return number


def retry_after_from(response: requests.Response, payload: object) -> int:
    """The wait a 429 names: Retry-After header, else the message's "in N seconds"."""
    header = response.headers.get("Retry-After", "")
    if header.isdigit():
        return min(max(int(header), 1), MAX_RETRY_AFTER)
    message = payload.get("message") if isinstance(payload, dict) else None
    match = _RETRY_IN.search(message) if isinstance(message, str) else None
    if match:
        return min(max(int(match.group(1)), 1), MAX_RETRY_AFTER)
    return DEFAULT_RETRY_AFTER


# --------------------------------------------------------------------- client
class ZipteamsClient:
    """Fetches dashboard tokens. Thread-safe; share one per process."""

    def __init__(self, api_url: str, api_key: str, api_secret: str, *, timeout: float = 10.0,
                 session: requests.Session | None = None, pool_size: int = 10, clock=time.time):
        self.url = api_url.rstrip("/") + TOKEN_PATH
        self._key = api_key
        self._secret = api_secret
        self.timeout = (timeout, timeout)  # (connect, read)
        # Under threads a request past its limit runs on (bounded.call): at most as many as the pool.
        self._threads = threading.BoundedSemaphore(pool_size)
        self._clock = clock
        if session is None:
            session = requests.Session()
            # No transport-level retries: a retried token request is a decision for the
            # cache above us, which knows whether a user is waiting.
            adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self.session = session

    def __repr__(self) -> str:
        return f"ZipteamsClient(url={self.shown_url!r})"

    @property
    def shown_url(self) -> str:
        """The token URL as errors and logs may show it: never user-info (config refuses it anyway)."""
        return redact_url(self.url)

    def fetch_token(self, tenant: str, subtenant: str, *, within: float | None = None) -> DashboardToken:
        """One token request; returns the parsed token or raises a ZipteamsError.

        ``within``: seconds left of the caller's deadline; the connect and read
        time-outs are capped by it, so one attempt can never outlast the deadline.
        """
        headers = {"x-api-key": self._key, "x-api-secret": self._secret, "x-tenant-id": tenant,
                   "x-sub-tenant-id": subtenant}
        where = {"tenant": tenant, "subtenant": subtenant}
        started = time.monotonic()
        outcome = "error"
        try:
            try:
                # Only the four documented headers; requests adds transport ones.
                cap = math.inf if within is None else max(within, 0.001)
                timeout = tuple(min(t, cap) for t in self.timeout)
                # Each byte a trickler sends restarts a per-read time-out; a fetch holds its team's
                # other users: in all, connect plus answer (or what is left of the deadline).
                total = min(sum(self.timeout), cap)
                response = bounded.call(total, functools.partial(
                    self.session.get, self.url, headers=headers, timeout=timeout, allow_redirects=False),
                    threads=self._threads)
            except requests.Timeout:
                outcome = "timeout"
                raise ZipteamsTimeout(f"no answer from {self.shown_url} within {timeout[0]:g}s", **where) from None
            except bounded.TimedOut as exc:
                outcome = "timeout"
                raise ZipteamsTimeout(f"earlier token requests to {self.shown_url} that took too long are still "
                                      "running" if isinstance(exc, bounded.Busy) else
                                      f"no complete answer from {self.shown_url} within {total:g} s in all", **where) from None
            except requests.RequestException as exc:
                outcome = "unreachable"
                # The exception text can hold the URL only; no header is ever in it,
                # but we still name only its type, and the URL without any user-info.
                raise ZipteamsUnreachable(f"connection to {self.shown_url} failed ({type(exc).__name__})",
                                          **where) from None
            token = self._read(response, tenant, subtenant)
            outcome = "ok"
            return token
        except ZipteamsError as exc:
            if outcome == "error":
                outcome = exc.code
            raise
        finally:
            elapsed = time.monotonic() - started
            metrics.ZIPTEAMS_CALLS.labels(outcome).inc()
            metrics.ZIPTEAMS_SECONDS.observe(elapsed)
            logger.info("zipteams token request tenant=%s subtenant=%s outcome=%s ms=%.1f",
                        tenant, subtenant, outcome, elapsed * 1000)

    def _read(self, response: requests.Response, tenant: str, subtenant: str) -> DashboardToken:
        where = {"tenant": tenant, "subtenant": subtenant, "upstream_status": response.status_code}
        status = response.status_code
        try:
            payload = response.json()
        except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
            payload = None
        if status == 200:
            if not isinstance(payload, dict):
                raise ZipteamsMalformedResponse(
                    f"200 answer from {self.shown_url} is not JSON (content-type {response.headers.get('Content-Type', 'none')!r}, "
                    f"{len(response.content)} bytes)", **where)
            data = payload.get("data")
            if payload.get("code") != "RESPONSE_SUCCESS" or not isinstance(data, dict) or "token" not in data:
                raise ZipteamsMalformedResponse("200 answer has no RESPONSE_SUCCESS data.token", **where)
            return parse_token(data["token"], tenant, subtenant, self._clock())
        message = payload.get("message") if isinstance(payload, dict) else None
        if status == 400:
            if message == "Tenant ID is required":
                raise ZipteamsMissingTenant("Zipteams says the tenant id is missing", **where)
            if message == "Subtenant ID is required":
                raise ZipteamsMissingSubtenant("Zipteams says the subtenant id is missing", **where)
            raise ZipteamsBadRequest("Zipteams refused the request as malformed (400)", **where)
        if status == 403:
            raise ZipteamsForbidden("Zipteams refused the partner API key or secret (403)", **where)
        if status == 429:
            wait = retry_after_from(response, payload)
            raise ZipteamsRateLimited(f"Zipteams rate limit hit; retry in {wait}s", retry_after=wait, **where)
        if 500 <= status <= 599:
            raise ZipteamsServerError(f"Zipteams server error ({status})", **where)
        raise ZipteamsUnexpectedStatus(f"{self.shown_url} answered with undocumented status {status}", **where)
