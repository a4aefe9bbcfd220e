"""Header mode: the user an authenticating proxy in front of us vouches for.

Identity comes from the proxy on every request: a signed assertion JWT when
``GATEWAY_ASSERTION_HEADER`` is set (plain identity headers are then ignored), otherwise
identity headers, believed only from peers in ``GATEWAY_TRUSTED_PROXIES`` (and only with
``GATEWAY_PROXY_SECRET`` when one is set).
"""
from __future__ import annotations

import hmac
import logging

from flask import current_app

from gateway.identity.assertions import AssertionRejected, JwtVerifier
from gateway.peers import peer_is_trusted
from gateway.identity.users import ClaimsRejected, User, user_from_claims, user_from_headers

logger = logging.getLogger(__name__)

ASSERTION_REMEMBER_SECONDS = 60  # a proxy's assertion, once verified (see gateway.identity.assertions)


def verifier(name: str, **kwargs) -> JwtVerifier:
    verifier = current_app.extensions.get(name)
    if verifier is None:
        verifier = current_app.extensions[name] = JwtVerifier(**kwargs)
    return verifier


def user_from_proxy(req, cfg) -> User | None:
    headers = req.headers
    if not peer_is_trusted(req.remote_addr, cfg["GATEWAY_TRUSTED_PROXIES"]):
        if headers.get(cfg["GATEWAY_USER_HEADER"]) is not None or (
                cfg["GATEWAY_ASSERTION_HEADER"] and headers.get(cfg["GATEWAY_ASSERTION_HEADER"])):
            # Anyone can type a header; only the proxy's count.
            logger.warning("identity header ignored: peer %s is not a trusted proxy", req.remote_addr)
        return None
    if cfg["GATEWAY_PROXY_SECRET"]:
        sent = headers.get(cfg["GATEWAY_PROXY_SECRET_HEADER"], "")
        if not hmac.compare_digest(sent.encode(), cfg["GATEWAY_PROXY_SECRET"].encode()):
            logger.warning("identity ignored: the proxy secret header is missing or wrong")
            return None
    if cfg["GATEWAY_ASSERTION_HEADER"]:
        return user_from_assertion(headers.get(cfg["GATEWAY_ASSERTION_HEADER"], ""))
    # A WSGI server joins repeated headers into one value ("a, b"), which is not
    # one well-formed address and is refused below; get() reads the environ key
    # directly, where getlist() would walk the whole environ on every request.
    value = headers.get(cfg["GATEWAY_USER_HEADER"])
    if value is None:
        return None
    user = user_from_headers(value, headers.get(cfg["GATEWAY_GROUPS_HEADER"], ""))
    if user is None:
        logger.warning("identity header ignored: not one well-formed email address")
    return user


def user_from_assertion(token: str) -> User | None:
    if not token:
        return None
    cfg = current_app.config
    jwt_verifier = verifier("assertion_verifier", audience=cfg["GATEWAY_ASSERTION_AUDIENCE"],
                            issuer=cfg["GATEWAY_ASSERTION_ISSUER"], jwks_url=cfg["GATEWAY_ASSERTION_JWKS_URL"],
                            remember=ASSERTION_REMEMBER_SECONDS)
    try:
        claims = jwt_verifier.verify(token)
    except AssertionRejected as exc:
        logger.warning("identity assertion refused: %s", exc.reason)
        return None
    try:
        return user_from_claims(claims, ("email",), "groups")
    except ClaimsRejected as exc:
        logger.warning("identity assertion refused: %s", exc)
        return None
