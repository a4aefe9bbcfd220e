"""The JWT verifier: remembering a proxy's verified assertion, and never more than that."""
import time

import pytest

from gateway.identity.assertions import LEEWAY, AssertionRejected, JwtVerifier

AUD, ISS = "gateway-test", "https://proxy.example"


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def claims(**over):
    now = int(time.time())
    base = {"iss": ISS, "aud": AUD, "iat": now, "exp": now + 300, "email": "alice@acme.example"}
    base.update(over)
    return base


def verifier(keys, **kwargs):
    return JwtVerifier(audience=AUD, issuer=ISS, jwks_url=keys.url, **kwargs)


def test_a_verified_assertion_is_remembered_for_the_window_only(keys):
    monotonic = Clock(1000.0)
    v = verifier(keys, remember=60, monotonic=monotonic)
    token = keys.sign(claims())
    first = v.verify(token)
    assert first["email"] == "alice@acme.example" and len(v._verified) == 1
    first["email"] = "mallory@evil.example"  # callers get a copy
    assert v.verify(token)["email"] == "alice@acme.example"
    monotonic.now += 60
    assert v._verified.get(token) is None  # forgotten; the next use verifies afresh
    assert v.verify(token)["email"] == "alice@acme.example"


def test_a_remembered_assertion_still_expires_at_its_exp(keys):
    now = time.time()
    clock = Clock(now)
    v = verifier(keys, remember=60, clock=clock)
    token = keys.sign(claims(exp=int(now) + 5))
    assert v.verify(token)
    clock.now = int(now) + 5 + LEEWAY - 1
    assert v.verify(token)
    clock.now = int(now) + 5 + LEEWAY
    with pytest.raises(AssertionRejected, match="expired"):
        v.verify(token)


def test_only_the_exact_string_is_remembered(keys):
    v = verifier(keys, remember=60)
    token = keys.sign(claims())
    v.verify(token)
    head, payload, signature = token.split(".")
    tampered = ".".join((head, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")))
    with pytest.raises(AssertionRejected):
        v.verify(tampered)
    with pytest.raises(AssertionRejected, match="wrong audience"):
        v.verify(keys.sign(claims(aud="another-app")))


def test_without_remember_nothing_is_kept(keys):
    v = verifier(keys)
    v.verify(keys.sign(claims()))
    assert v._verified is None


def signed_naming(keys, signer: str, named: str, **over) -> str:
    """A token signed with ``signer``'s key (and its algorithm) whose header names ``named``."""
    import jwt

    alg, private_key = keys.keys[signer]
    return jwt.encode(claims(**over), private_key, algorithm=alg, headers={"kid": named})


def test_es256_token_naming_an_rsa_key_is_refused(keys):
    with pytest.raises(AssertionRejected, match="ES256 token names a key of another type"):
        verifier(keys).verify(signed_naming(keys, "ec-1", "rsa-1"))


def test_rs256_token_naming_an_ec_key_is_refused(keys):
    with pytest.raises(AssertionRejected, match="RS256 token names a key of another type"):
        verifier(keys).verify(signed_naming(keys, "rsa-1", "ec-1"))


def test_nothing_but_assertion_rejected_leaves_verify(keys, monkeypatch):
    import jwt

    def broken(*args, **kwargs):
        raise TypeError("Expecting a PEM-formatted key.")

    monkeypatch.setattr(jwt, "decode", broken)
    with pytest.raises(AssertionRejected, match=r"unverifiable \(TypeError\)"):
        verifier(keys).verify(keys.sign(claims()))
