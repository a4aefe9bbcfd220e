"""OIDC login against a real OpenID provider on loopback (oidc-provider-mock)."""
import re
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import recording_session

oidc_mock = pytest.importorskip("oidc_provider_mock")
PUBLIC = "http://gateway.test"
CLIENT_ID = "zipteams-gateway"


@pytest.fixture(scope="module")
def idp():
    with oidc_mock.run_server_in_thread(port=0, require_nonce=True) as server:
        yield f"http://localhost:{server.server_port}"


@pytest.fixture(autouse=True)
def insecure_transport_for_loopback(monkeypatch):
    # The provider here speaks plain HTTP on loopback; production issuers are https.
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")


@pytest.fixture
def oidc_app(make_app, idp, tmp_path):
    return make_app(GATEWAY_AUTH_MODE="oidc", OIDC_ISSUER=idp, OIDC_CLIENT_ID=CLIENT_ID,
                    OIDC_CLIENT_SECRET="client-secret", GATEWAY_PUBLIC_URL=PUBLIC,
                    GATEWAY_STATE_DIR=str(tmp_path / "state"))


def set_user(idp, claims):
    """A user at the IdP, its address verified unless ``claims`` says otherwise (None: no such claim).

    The mock IdP sends exactly the claims it is given, and the gateway requires email_verified.
    """
    sub = "user-" + uuid.uuid4().hex[:8]
    claims = {k: v for k, v in {"email_verified": True, **claims}.items() if v is not None}
    with recording_session() as http:
        http.put(f"{idp}/users/{sub}", json=claims).raise_for_status()
    return sub


def start_login(client, path="/"):
    first = client.get(path)
    assert first.status_code == 302 and first.headers["Location"].startswith("/login?next=")
    to_idp = client.get(first.headers["Location"])
    assert to_idp.status_code == 302
    return to_idp.headers["Location"]


def at_idp(authorize_url, sub=None, action=None):
    """What the user does at the IdP; returns where the IdP sends the browser."""
    data = {"sub": sub} if sub else {}
    if action:
        data["action"] = action
    with recording_session() as http:
        answer = http.post(authorize_url, data=data, allow_redirects=False)
    assert answer.status_code == 302, answer.text[:300]
    return answer.headers["Location"]


def callback(client, idp_redirect):
    parts = urlsplit(idp_redirect)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC and parts.path == "/auth/callback"
    return client.get(parts.path + "?" + parts.query)


def login(client, idp, claims, path="/"):
    sub = set_user(idp, claims)
    response = callback(client, at_idp(start_login(client, path), sub))
    return sub, response


def test_authorization_request_uses_pkce_state_and_nonce(oidc_app):
    url = start_login(oidc_app.test_client())
    query = parse_qs(urlsplit(url).query)
    assert query["response_type"] == ["code"] and query["client_id"] == [CLIENT_ID]
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) >= 43
    assert query["state"][0] and query["nonce"][0]
    assert query["redirect_uri"] == [PUBLIC + "/auth/callback"]
    assert set(query["scope"][0].split()) == {"openid", "email", "profile"}


def test_login_with_groups_chooses_the_subtenant_and_restores_the_page(oidc_app, idp):
    client = oidc_app.test_client()
    _, done = login(client, idp, {"email": "zed@elsewhere.example", "groups": ["us"]}, path="/select")
    assert done.status_code == 302 and done.headers["Location"] == "/select"
    page = client.get("/")
    assert page.status_code == 200 and "Sales US" in page.get_data(as_text=True)


def test_denied_login_is_a_plain_page_with_a_retry_link(oidc_app):
    client = oidc_app.test_client()
    response = callback(client, at_idp(start_login(client), action="deny"))
    text = response.get_data(as_text=True)
    assert response.status_code == 403 and "Sign-in was refused" in text
    assert 'href="/login"' in text and "Location" not in response.headers


def test_bad_state_is_refused(oidc_app, idp):
    client = oidc_app.test_client()
    sub = set_user(idp, {"email": "alice@acme.example"})
    redirect = at_idp(start_login(client), sub)
    forged = re.sub(r"state=[^&]+", "state=forged", redirect)
    response = callback(client, forged)
    assert response.status_code == 400 and "expired" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302  # still signed out


def test_replayed_code_is_refused(oidc_app, idp):
    client = oidc_app.test_client()
    sub = set_user(idp, {"email": "alice@acme.example"})
    redirect = at_idp(start_login(client), sub)
    assert callback(client, redirect).status_code == 302
    # A second login attempt (fresh state) fed the old, used code.
    attacker = oidc_app.test_client()
    fresh = urlsplit(start_login(attacker))
    state = parse_qs(fresh.query)["state"][0]
    code = parse_qs(urlsplit(redirect).query)["code"][0]
    response = attacker.get(f"/auth/callback?code={code}&state={state}")
    assert response.status_code == 400
    assert attacker.get("/").status_code == 302


def refused_id_token_errors() -> tuple:
    """What Authlib raises for an ID token it refuses: authlib.jose's errors on Authlib 1.6,
    joserfc's from 1.7 (the library that verifies ID tokens, as the README's table says)."""
    from authlib.common.errors import AuthlibBaseError

    try:
        from joserfc.errors import JoseError
    except ImportError:
        return (AuthlibBaseError,)
    return (AuthlibBaseError, JoseError)


def test_id_token_for_another_audience_is_refused(oidc_app, idp):

    # A genuine ID token from the same provider, issued to a different client.
    sub = set_user(idp, {"email": "alice@acme.example"})
    with recording_session() as http:
        auth = http.get(f"{idp}/oauth2/authorize", params={
            "client_id": "another-app", "response_type": "code", "scope": "openid email",
            "redirect_uri": "http://another.example/cb", "nonce": "n-1", "state": "s"}, allow_redirects=False)
        assert auth.status_code == 200
        back = http.post(auth.url, data={"sub": sub}, allow_redirects=False)
        code = parse_qs(urlsplit(back.headers["Location"]).query)["code"][0]
        token = http.post(f"{idp}/oauth2/token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": "http://another.example/cb",
            "client_id": "another-app", "client_secret": "x"}).json()
    with oidc_app.app_context():
        client = oidc_app.extensions["oidc_client"]
        # The check our callback runs on the ID token after the code exchange
        # (signature, iss and nonce are all fine here: only the audience is wrong).
        with pytest.raises(refused_id_token_errors()):
            client.parse_id_token(token, nonce="n-1")


@pytest.mark.parametrize("verified", [False, "true", None], ids=["false", "a-string", "absent"])
def test_an_unverified_email_is_refused_by_default(oidc_app, idp, verified):
    client = oidc_app.test_client()
    _, refused = login(client, idp, {"email": "alice@acme.example", "email_verified": verified})
    assert refused.status_code == 403 and "Sign-in was refused" in refused.get_data(as_text=True)
    assert client.get("/").status_code == 302  # still signed out
    _, ok = login(oidc_app.test_client(), idp, {"email": "alice@acme.example", "email_verified": True})
    assert ok.status_code == 302


def test_the_verified_email_check_can_be_turned_off(make_app, idp, tmp_path):
    app = make_app(GATEWAY_AUTH_MODE="oidc", OIDC_ISSUER=idp, OIDC_CLIENT_ID=CLIENT_ID, OIDC_CLIENT_SECRET="s",
                   GATEWAY_PUBLIC_URL=PUBLIC, OIDC_REQUIRE_VERIFIED_EMAIL="false",
                   GATEWAY_STATE_DIR=str(tmp_path / "state"))
    _, ok = login(app.test_client(), idp, {"email": "alice@acme.example", "email_verified": False})
    assert ok.status_code == 302


def test_users_are_keyed_by_issuer_and_subject(oidc_app, idp):
    client = oidc_app.test_client()
    sub, _ = login(client, idp, {"email": "alice@acme.example"})
    with client.session_transaction() as s:
        assert s["subject"] == f"{idp}|{sub}" and s["email"] == "alice@acme.example"


def test_logout_signs_out_here_and_at_the_idp_and_the_cookie_is_dead(oidc_app, idp):
    client = oidc_app.test_client()
    login(client, idp, {"email": "alice@acme.example"})
    cookie = client.get_cookie("__Host-zg_session").value
    page = client.get("/").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    out = client.post("/logout", data={"csrf_token": csrf})
    assert out.status_code == 303 and out.headers["Location"] == "/signed-out"
    onward = client.get("/signed-out").get_data(as_text=True)
    href = re.search(r'id="continue-signout" class="button" href="([^"]+)"', onward).group(1).replace("&amp;", "&")
    target = urlsplit(href)
    assert f"{target.scheme}://{target.netloc}{target.path}" == f"{idp}/oauth2/end_session"
    query = parse_qs(target.query)
    assert query["post_logout_redirect_uri"] == [PUBLIC + "/signed-out"] and query["client_id"] == [CLIENT_ID]
    assert "id_token_hint" not in query  # no token in a URL handed to the browser (the default)
    with recording_session() as http:
        assert http.get(href).status_code == 200  # the IdP's sign-out page
    assert "continue-signout" not in client.get("/signed-out").get_data(as_text=True)  # one page only
    replay = oidc_app.test_client()
    replay.set_cookie("__Host-zg_session", cookie)
    response = replay.get("/")
    assert response.status_code == 401 and "Your session has ended" in response.get_data(as_text=True)


def test_idp_down_is_a_plain_page_not_a_loop(make_app, tmp_path):
    from conftest import free_port

    app = make_app(GATEWAY_AUTH_MODE="oidc", OIDC_ISSUER=f"http://localhost:{free_port()}",
                   OIDC_CLIENT_ID=CLIENT_ID, OIDC_CLIENT_SECRET="s", GATEWAY_PUBLIC_URL=PUBLIC,
                   GATEWAY_STATE_DIR=str(tmp_path / "state"))
    response = app.test_client().get("/login")
    assert response.status_code == 502 and "not answering" in response.get_data(as_text=True)


# ------------------------------------------------------- private_key_jwt
@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_private_key_jwt_is_authlibs_own_with_our_kid_and_the_key_never_shows(make_app, idp, tmp_path, alg):
    from types import SimpleNamespace

    import jwt
    from authlib.oauth2.rfc7523 import PrivateKeyJWT
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from gateway.identity.idp import client_auth

    key = ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else \
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path = tmp_path / "client-key.pem"
    path.write_text(pem)
    settings = {"OIDC_CLIENT_AUTH_METHOD": "private_key_jwt", "OIDC_CLIENT_KEY_FILE": str(path),
                "OIDC_CLIENT_KEY_ID": "gateway-key-1", "OIDC_CLIENT_SECRET": ""}
    secret, kwargs, methods = client_auth(settings)
    [method] = methods
    assert type(method) is PrivateKeyJWT and kwargs == {"token_endpoint_auth_method": "private_key_jwt"}
    endpoint = "https://idp.example/token"
    auth = SimpleNamespace(client_id=CLIENT_ID, client_secret=secret)
    sent = [parse_qs(method(auth, "POST", endpoint, {}, "grant_type=authorization_code")[2]) for _ in range(2)]
    for body in sent:
        assert body["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
        assertion = body["client_assertion"][0]
        header = jwt.get_unverified_header(assertion)
        assert header["alg"] == alg and header["kid"] == "gateway-key-1"
        claims = jwt.decode(assertion, key.public_key(), algorithms=[alg], audience=endpoint)
        assert claims["iss"] == claims["sub"] == CLIENT_ID and 0 < claims["exp"] - claims["iat"] <= 3600
    assert sent[0]["client_assertion"] != sent[1]["client_assertion"]
    jtis = {jwt.decode(b["client_assertion"][0], options={"verify_signature": False})["jti"] for b in sent}
    assert len(jtis) == 2  # a fresh jti each time: an IdP may refuse a replayed one
    # The key material never shows in a repr: not the secret's, the method's, nor the registered client's.
    app = make_app(GATEWAY_AUTH_MODE="oidc", OIDC_ISSUER=idp, OIDC_CLIENT_ID=CLIENT_ID, GATEWAY_PUBLIC_URL=PUBLIC,
                   **settings)
    registered = app.extensions["oidc_client"]
    body = "".join(pem.strip().splitlines()[1:-1])
    for shown in (repr(secret), repr(methods), repr((secret, kwargs)), repr(registered), repr(vars(registered))):
        assert "PRIVATE KEY" not in shown and body[:40] not in shown and body[-40:] not in shown
