"""Verifying identity JWTs other systems send us: proxy assertions and app hand-offs.

One verifier, strict by construction: an algorithm allow-list fixed by how the
key is configured (HS256 for a shared secret; RS/ES/PS for JWKS keys), never
``none``, never an HMAC keyed with a public key, a JWKS key only for its own
family (RSA for RS/PS, EC for ES); ``exp`` and ``iat`` required, ``aud`` and
``iss`` checked, a small leeway for clocks, and for hand-offs a bound on how
far ahead ``exp`` may be. JWKS keys are fetched and
cached by PyJWT, refetched when an unknown ``kid`` appears (key rotation).

A proxy sends its assertion with every request, usually the same one for a
while, and checking a signature costs far more than the rest of a page view.
With ``remember`` set, a token string that verified is trusted again for that
many seconds, still refused once its ``exp`` has passed. The key is the exact
string, so nothing unverified can hit; a key removed from the JWKS stops
working within ``remember`` seconds (PyJWT's key cache already keeps keys for
five minutes). Hand-offs are never remembered: each is used once.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from gateway.memo import Memo

logger = logging.getLogger(__name__)

ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
LEEWAY = 30
MAX_TOKEN = 65536  # a hand-off with hundreds of groups is POSTed; anything longer is refused unread


class AssertionRejected(Exception):
    """The JWT does not prove anything. ``reason`` is safe to log (no token in it)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class JwtVerifier:
    """PyJWT, and with it cryptography's bindings (about 9 MB a worker), is imported when a
    verifier is made: only the sign-in modes that verify JWTs pay for it (docs/performance.md)."""

    def __init__(self, *, audience: str, issuer: str, secret: str = "", jwks_url: str = "",
                 max_lifetime: float | None = None, clock: Callable[[], float] = time.time,
                 remember: float = 0.0, monotonic: Callable[[], float] = time.monotonic):
        if bool(secret) == bool(jwks_url):
            raise ValueError("exactly one of secret or jwks_url")
        self.audience, self.issuer, self.max_lifetime, self._clock = audience, issuer, max_lifetime, clock
        self._secret = secret
        self.algorithms = ("HS256",) if secret else ASYMMETRIC
        import jwt
        from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

        # The key type each algorithm family verifies with; a JWKS key of another type is refused.
        self._key_types = {"RS": RSAPublicKey, "PS": RSAPublicKey, "ES": EllipticCurvePublicKey}
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=5) if jwks_url else None
        self._verified = Memo(2048, ttl=remember, clock=monotonic) if remember > 0 else None

    def __repr__(self) -> str:
        return f"JwtVerifier(issuer={self.issuer!r}, audience={self.audience!r}, algorithms={self.algorithms})"

    def verify(self, token: str) -> dict[str, Any]:
        if self._verified is None:
            return self._verify(token)
        claims = self._verified.get(token)
        if claims is None:
            claims = self._verify(token)
            self._verified.put(token, claims)
        elif claims["exp"] + LEEWAY <= self._clock():  # as PyJWT would judge it now
            raise AssertionRejected("expired")
        return dict(claims)

    def _verify(self, token: str) -> dict[str, Any]:
        import jwt  # loaded by __init__: a dictionary lookup here

        if not token or len(token) > MAX_TOKEN:
            raise AssertionRejected("missing or oversized token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AssertionRejected("not a JWT") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise AssertionRejected(f"algorithm {str(alg)[:10]!r} not allowed")
        try:
            key = self._secret if self._jwks is None else self._jwks.get_signing_key_from_jwt(token).key
        except jwt.PyJWKClientError as exc:
            raise AssertionRejected(f"no usable signing key ({type(exc).__name__})") from None
        except Exception as exc:  # noqa: BLE001 - a JWKS that is not JSON, an unknown key type...
            raise AssertionRejected(f"no usable signing key ({type(exc).__name__})") from None
        if self._jwks is not None and not isinstance(key, self._key_types[alg[:2]]):
            # An ES256 header naming an RSA key (or the converse): PyJWT would fail with a
            # TypeError from cryptography; it is simply a token no key of ours signed.
            raise AssertionRejected(f"{alg} token names a key of another type")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self.audience,
                                issuer=self.issuer, leeway=LEEWAY,
                                options={"require": ["exp", "iat", "aud", "iss"]})
        except jwt.ExpiredSignatureError:
            raise AssertionRejected("expired") from None
        except jwt.ImmatureSignatureError:
            raise AssertionRejected("not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise AssertionRejected("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise AssertionRejected("wrong issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AssertionRejected(f"missing claim {exc.claim}") from None
        except jwt.PyJWTError as exc:
            raise AssertionRejected(f"invalid ({type(exc).__name__})") from None
        except Exception as exc:  # noqa: BLE001 - whatever else PyJWT or cryptography raise on odd input
            raise AssertionRejected(f"unverifiable ({type(exc).__name__})") from None
        if self.max_lifetime is not None and claims["exp"] - self._clock() > self.max_lifetime + LEEWAY:
            raise AssertionRejected("exp too far ahead")
        return claims
