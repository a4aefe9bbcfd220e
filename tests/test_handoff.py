"""JWT hand-off from the partner's app (GATEWAY_AUTH_MODE=jwt), and the session it starts."""
import time
import uuid

import jwt
import pytest

from conftest import FakeClock

SECRET = "handoff-secret-" + "x" * 32
ISS, AUD = "https://app.partner.example", "zipteams-gateway"


def claims(**over):
    now = int(time.time())
    base = {"iss": ISS, "aud": AUD, "iat": now, "exp": now + 120, "jti": uuid.uuid4().hex,
            "email": "alice@acme.example", "groups": []}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def hs(payload, key=SECRET, alg="HS256", **headers):
    return jwt.encode(payload, key, algorithm=alg, headers=headers or None)


@pytest.fixture
def jwt_app(make_app, tmp_path):
    return make_app(GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_SECRET=SECRET, GATEWAY_HANDOFF_ISSUER=ISS,
                    GATEWAY_HANDOFF_AUDIENCE=AUD, GATEWAY_STATE_DIR=str(tmp_path / "state"))


@pytest.fixture
def jc(jwt_app):
    return jwt_app.test_client()


def test_handoff_signs_in_and_returns_to_the_page(jc):
    response = jc.get("/sso/jwt", query_string={"jwt": hs(claims()), "return_to": "/select"})
    assert response.status_code == 302 and response.headers["Location"] == "/select"
    assert "Sales EMEA" in jc.get("/").get_data(as_text=True)


def test_handoff_with_groups_picks_the_subtenant(jc):
    jc.get("/sso/jwt", query_string={"jwt": hs(claims(email="zed@else.example", groups=["us"]))})
    assert "Sales US" in jc.get("/").get_data(as_text=True)


def test_jti_is_single_use(jc, jwt_app):
    token = hs(claims())
    assert jc.get("/sso/jwt", query_string={"jwt": token}).status_code == 302
    replay = jwt_app.test_client().get("/sso/jwt", query_string={"jwt": token})
    assert replay.status_code == 401 and "jti" not in replay.get_data(as_text=True)
    assert "invalid, expired or was already used" in replay.get_data(as_text=True)


def test_jti_is_single_use_across_workers(jwt_app, make_app, tmp_path):
    # A second app on the same state store stands for another gunicorn worker.
    other = make_app(GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_SECRET=SECRET, GATEWAY_HANDOFF_ISSUER=ISS,
                     GATEWAY_HANDOFF_AUDIENCE=AUD, GATEWAY_STATE_DIR=str(tmp_path / "state"))
    token = hs(claims())
    assert jwt_app.test_client().get("/sso/jwt", query_string={"jwt": token}).status_code == 302
    assert other.test_client().get("/sso/jwt", query_string={"jwt": token}).status_code == 401


@pytest.mark.parametrize("payload, reason", [
    (claims(exp=None), "no exp"),
    (claims(exp=int(time.time()) - 120), "expired"),
    (claims(exp=int(time.time()) + 3600), "exp more than 5 minutes ahead"),
    (claims(iat=int(time.time()) + 300), "iat in the future"),
    (claims(nbf=int(time.time()) + 300), "nbf in the future"),
    (claims(aud="someone-else"), "wrong audience"),
    (claims(iss="https://evil.example"), "wrong issuer"),
    (claims(jti=None), "no jti"),
    (claims(email="not-an-email"), "malformed email"),
    (claims(email="alice@acme.example@evil.example"), "two @"),
])
def test_bad_handoff_tokens_are_refused(jc, payload, reason):
    response = jc.get("/sso/jwt", query_string={"jwt": hs(payload)})
    assert response.status_code == 401, reason
    assert jc.get("/").status_code == 401


def test_small_clock_skew_is_tolerated(jc):
    assert jc.get("/sso/jwt", query_string={"jwt": hs(claims(iat=int(time.time()) + 10))}).status_code == 302


def test_wrong_secret_none_and_rs_confusion_are_refused(jc, keys):
    assert jc.get("/sso/jwt", query_string={"jwt": hs(claims(), key="another-secret-" + "y" * 32)}).status_code == 401
    unsigned = jwt.encode(claims(), None, algorithm="none")
    assert jc.get("/sso/jwt", query_string={"jwt": unsigned}).status_code == 401
    rs = keys.sign(claims())
    assert jc.get("/sso/jwt", query_string={"jwt": rs}).status_code == 401


def test_rs256_and_es256_from_a_jwks(make_app, keys, tmp_path):
    app = make_app(GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_JWKS_URL=keys.url, GATEWAY_HANDOFF_ISSUER=ISS,
                   GATEWAY_HANDOFF_AUDIENCE=AUD, GATEWAY_STATE_DIR=str(tmp_path / "state"))
    for kid in ("rsa-1", "ec-1"):
        client = app.test_client()
        assert client.get("/sso/jwt", query_string={"jwt": keys.sign(claims(), kid=kid)}).status_code == 302
    # HS256 keyed with the RSA public key (the classic confusion attack) is refused.
    assert app.test_client().get("/sso/jwt", query_string={"jwt": hs_with_public_key(keys)}).status_code == 401


def signed_naming(keys, signer, named, **over):
    """A hand-off signed with ``signer``'s key and algorithm whose header names the key ``named``."""
    alg, private_key = keys.keys[signer]
    return jwt.encode(claims(**over), private_key, algorithm=alg, headers={"kid": named})


@pytest.mark.parametrize("signer, named", [("ec-1", "rsa-1"), ("rsa-1", "ec-1")],
                         ids=["es256-naming-an-rsa-key", "rs256-naming-an-ec-key"])
def test_a_token_naming_a_key_of_another_type_is_401(make_app, keys, tmp_path, caplog, signer, named):
    app = make_app(GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_JWKS_URL=keys.url, GATEWAY_HANDOFF_ISSUER=ISS,
                   GATEWAY_HANDOFF_AUDIENCE=AUD, GATEWAY_STATE_DIR=str(tmp_path / "state"))
    client = app.test_client()
    response = client.get("/sso/jwt", query_string={"jwt": signed_naming(keys, signer, named)})
    assert response.status_code == 401 and "invalid, expired or was already used" in response.get_data(as_text=True)
    assert "Traceback" not in caplog.text and "key of another type" in caplog.text
    assert client.get("/").status_code == 401


def hs_with_public_key(keys):
    import base64
    import hashlib
    import hmac
    import json

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode()) + b"." + \
        b64(json.dumps(claims()).encode())
    signature = hmac.new(keys.public_pem("rsa-1"), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(signature)).decode()


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example", "/\\evil.example"])
def test_return_to_never_leaves_the_site(jc, target):
    response = jc.get("/sso/jwt", query_string={"jwt": hs(claims()), "return_to": target})
    assert response.headers["Location"] == "/"


def test_handoff_is_not_there_in_other_modes(client):
    assert client.get("/sso/jwt", query_string={"jwt": hs(claims())}).status_code == 404


# ------------------------------------------------------------------ sessions
def signed_in(app, clock=None):
    client = app.test_client()
    assert client.get("/sso/jwt", query_string={"jwt": hs(claims())}).status_code == 302
    return client


def test_logout_revokes_the_cookie_server_side(jwt_app):
    client = signed_in(jwt_app)
    cookie = client.get_cookie("__Host-zg_session").value
    page = client.get("/")
    csrf = page.get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    replay = jwt_app.test_client()
    replay.set_cookie("__Host-zg_session", cookie)
    assert replay.get("/").status_code == 401


@pytest.fixture
def clocked(make_app, tmp_path):
    clock = FakeClock()
    app = make_app(GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_SECRET=SECRET, GATEWAY_HANDOFF_ISSUER=ISS,
                   GATEWAY_HANDOFF_AUDIENCE=AUD, GATEWAY_STATE_DIR=str(tmp_path / "state"),
                   GATEWAY_SESSION_IDLE="600", GATEWAY_SESSION_MAX="3600", CLOCK=clock)
    return app, clock


def test_idle_session_ends(clocked):
    app, clock = clocked
    client = signed_in(app)
    clock.advance(599)
    assert client.get("/").status_code == 200
    clock.advance(599)  # active a moment ago: the idle clock restarted
    assert client.get("/").status_code == 200
    clock.advance(601)
    assert client.get("/").status_code == 401


def test_session_has_an_absolute_lifetime(clocked):
    app, clock = clocked
    client = signed_in(app)
    for _ in range(7):  # active every 500 s, so never idle...
        clock.advance(500)
        assert client.get("/").status_code == 200
    clock.advance(500)  # ...but 4000 s after sign-in, past the 3600 s maximum
    assert client.get("/").status_code == 401


def test_secret_key_rotation_keeps_sessions(make_app, tmp_path):
    old_key = "old-secret-key-" + "o" * 32
    state = str(tmp_path / "state")
    common = dict(GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_SECRET=SECRET, GATEWAY_HANDOFF_ISSUER=ISS,
                  GATEWAY_HANDOFF_AUDIENCE=AUD, GATEWAY_STATE_DIR=state)
    old = make_app(GATEWAY_SECRET_KEY=old_key, **common)
    cookie = signed_in(old).get_cookie("__Host-zg_session").value
    rotated = make_app(GATEWAY_SECRET_KEY_FALLBACKS=old_key, **common).test_client()
    rotated.set_cookie("__Host-zg_session", cookie)
    assert rotated.get("/").status_code == 200
    forgotten = make_app(**common).test_client()
    forgotten.set_cookie("__Host-zg_session", cookie)
    assert forgotten.get("/").status_code == 401


def test_a_hand_off_the_store_cannot_check_gets_503_with_retry_after(jwt_app, tmp_path):
    import sqlite3

    with sqlite3.connect(tmp_path / "state" / "state.sqlite3") as db:
        db.execute("DROP TABLE marks")  # the store cannot answer (any SQLite error does the same)
    client = jwt_app.test_client()
    response = client.get("/sso/jwt", query_string={"jwt": hs(claims())})
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert "cannot be checked right now" in response.get_data(as_text=True)
    again = client.get("/sso/jwt", query_string={"jwt": hs(claims())}, headers={"Accept": "application/json"})
    assert again.status_code == 503 and again.json["error"]["code"] == "handoff_unverifiable"
    assert 1 <= int(again.headers["Retry-After"]) <= 5 and again.json["error"]["retry_after"] >= 1
    assert client.get("/").status_code == 401  # no session was started
