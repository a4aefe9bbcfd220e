"""The certified IdP harness itself (tests/certified_idp.py + tests/oidc/provider.mjs), no gateway.

These prove that the real oidc-provider behaves as the interoperability tests assume: discovery,
the code flow with PKCE and ``iss`` in the response, scope claims at userinfo and not in the ID
token, ES256/PS256 ID tokens, private_key_jwt, key rotation, clock skew, Cancel, SSO and logout.
"""
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from certified_idp import (  # noqa: F401 - fixtures are found by import
    POST_LOGOUT_REDIRECT_URI,
    REDIRECT_URI,
    IdpPageError,
    authorization_code_flow,
    callback_params,
    certified_idp,
    certified_idp_module,
    client_key,
    client_metadata,
    pkce_pair,
    public_jwks,
    sign_in_with_browser,
    sign_in_with_requests,
    sign_out_with_browser,
    sign_out_with_requests,
    verify_id_token,
)
from conftest import recording_session

SCOPE_CLAIMS = {"email", "email_verified", "groups", "name", "preferred_username", "upn"}
PKJWT_KEY = client_key("RS256")
OTHER_KEY = client_key("RS256")


@pytest.fixture(autouse=True)
def insecure_transport_for_loopback(monkeypatch):
    # The provider speaks plain HTTP on loopback, and the redirect_uri is http://gateway.test.
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")


@pytest.fixture(scope="module")
def idp(certified_idp_module):  # noqa: F811
    return certified_idp_module(clients=[
        client_metadata("gateway", secret="gateway-client-secret"),
        client_metadata("post-client", secret="post-client-secret", auth_method="client_secret_post"),
        client_metadata("es256-client", secret="es256-client-secret", alg="ES256"),
        client_metadata("ps256-client", secret="ps256-client-secret", alg="PS256"),
        client_metadata("pkjwt-client", auth_method="private_key_jwt", jwks=public_jwks(PKJWT_KEY)),
    ])


def test_discovery_advertises_iss_parameter_end_session_and_algs(idp):
    meta = idp.discovery()
    assert meta["issuer"] == idp.issuer and urlsplit(idp.issuer).hostname == "127.0.0.1"
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert meta["end_session_endpoint"] == idp.issuer + "/session/end"
    assert meta["userinfo_endpoint"] == idp.issuer + "/me"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert {"RS256", "ES256", "PS256"} <= set(meta["id_token_signing_alg_values_supported"])
    assert {"client_secret_basic", "client_secret_post", "private_key_jwt"} <= set(
        meta["token_endpoint_auth_methods_supported"])
    assert {"openid", "email", "profile", "groups"} <= set(meta["scopes_supported"])
    assert "client_credentials" not in meta["grant_types_supported"]
    assert idp.oidc_provider_version.startswith("9.")
    kids = {k["kid"]: k["alg"] for k in idp.jwks()["keys"]}
    assert {kids[kid] for kid in idp.kids.values()} == {"RS256", "ES256", "PS256"}
    assert not any("d" in k for k in idp.jwks()["keys"])  # public keys only


def test_code_flow_with_plain_requests_id_token_lacks_scope_claims_userinfo_has_them(idp):
    verifier, challenge = pkce_pair()
    url = idp.authorize_url("gateway", code_challenge=challenge, state="st-1", nonce="n-1")
    back = sign_in_with_requests(url, "alice")
    assert back.startswith(REDIRECT_URI + "?")
    params = callback_params(back)
    assert params["state"] == "st-1" and params["iss"] == idp.issuer and params["code"]

    with recording_session() as http:
        answer = http.post(idp.discovery()["token_endpoint"], auth=("gateway", "gateway-client-secret"), data={
            "grant_type": "authorization_code", "code": params["code"], "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier}, timeout=15)
        assert answer.status_code == 200, answer.text
        token = answer.json()
        header, claims = verify_id_token(idp, token["id_token"], "gateway")
        assert header["alg"] == "RS256" and header["kid"] == idp.kids["RS256"]
        assert claims["sub"] == "alice" and claims["nonce"] == "n-1" and claims["iss"] == idp.issuer
        assert not SCOPE_CLAIMS & claims.keys(), f"scope claims leaked into the ID token: {claims}"

        info = http.get(idp.discovery()["userinfo_endpoint"],
                        headers={"Authorization": "Bearer " + token["access_token"]}, timeout=15)
        assert info.status_code == 200, info.text
        assert info.json() == {"sub": "alice", "email": "alice@acme.example", "email_verified": True,
                               "groups": ["sales", "everyone"], "name": "Alice Example",
                               "preferred_username": "alice", "upn": "alice@acme.example"}
        # A code is good once; and the wrong PKCE verifier never worked.
        again = http.post(idp.discovery()["token_endpoint"], auth=("gateway", "gateway-client-secret"), data={
            "grant_type": "authorization_code", "code": params["code"], "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier}, timeout=15)
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_scopes_decide_userinfo_claims(idp):
    flow = authorization_code_flow(idp, "gateway", "bob", scope="openid email")
    assert flow.userinfo(idp) == {"sub": "bob", "email": "bob@acme.example", "email_verified": False}


@pytest.mark.parametrize("client_id, alg", [("gateway", "RS256"), ("es256-client", "ES256"),
                                             ("ps256-client", "PS256"), ("post-client", "RS256")])
def test_id_token_alg_per_client(idp, client_id, alg):
    flow = authorization_code_flow(idp, client_id, "alice")
    header, claims = verify_id_token(idp, flow.token["id_token"], client_id)
    assert header["alg"] == alg and header["kid"] == idp.kids[alg]
    assert claims["aud"] == client_id and claims["nonce"] == flow.nonce
    assert flow.callback["iss"] == idp.issuer


def test_private_key_jwt_client_authentication(idp):
    flow = authorization_code_flow(idp, "pkjwt-client", "alice", private_key=PKJWT_KEY)
    assert verify_id_token(idp, flow.token["id_token"], "pkjwt-client")[1]["sub"] == "alice"
    assert flow.userinfo(idp)["email"] == "alice@acme.example"

    from authlib.integrations.base_client.errors import OAuthError
    with pytest.raises(OAuthError) as refused:
        authorization_code_flow(idp, "pkjwt-client", "alice", private_key=OTHER_KEY)
    assert refused.value.error == "invalid_client"


def test_pkce_is_required_and_errors_carry_iss(idp):
    url = idp.authorize_url("gateway", code_challenge="x" * 43)
    url = url.replace("&code_challenge=" + "x" * 43, "").replace("&code_challenge_method=S256", "")
    with recording_session() as http:
        answer = http.get(url, allow_redirects=False, timeout=15)
    assert answer.status_code in (302, 303)
    params = callback_params(answer.headers["Location"])
    assert params["error"] == "invalid_request" and "PKCE" in params["error_description"]
    assert params["iss"] == idp.issuer


def test_cancel_gives_access_denied_with_iss(idp):
    _, challenge = pkce_pair()
    back = sign_in_with_requests(idp.authorize_url(code_challenge=challenge, state="st-cancel"), action="cancel")
    assert back.startswith(REDIRECT_URI + "?")
    params = callback_params(back)
    assert params["error"] == "access_denied" and params["state"] == "st-cancel"
    assert params["iss"] == idp.issuer and "code" not in params


def test_unknown_account_stays_on_the_form(idp):
    _, challenge = pkce_pair()
    with pytest.raises(IdpPageError, match="Unknown account"):
        sign_in_with_requests(idp.authorize_url(code_challenge=challenge), "mallory")


def test_idp_session_gives_silent_sign_in_until_rp_initiated_logout(idp):
    with recording_session() as browser:
        first = authorization_code_flow(idp, "gateway", "alice", browser_session=browser)
        # Second authorization, same cookie jar: straight back to the client, no form.
        _, challenge = pkce_pair()
        answer = browser.get(idp.authorize_url(code_challenge=challenge), allow_redirects=False, timeout=15)
        assert answer.is_redirect and answer.headers["Location"].startswith(REDIRECT_URI + "?code=")
        # Another client, same IdP session: signed in already, its grant is given without a page.
        other = authorization_code_flow(idp, "es256-client", "nobody-typed-this", browser_session=browser)
        assert verify_id_token(idp, other.token["id_token"], "es256-client")[1]["sub"] == "alice"

        # Logout by client_id (no id_token_hint): a page with a "Sign out" button, then the RP.
        page = browser.get(idp.end_session_url(client_id="gateway", post_logout_redirect_uri=POST_LOGOUT_REDIRECT_URI,
                                               state="bye"), timeout=15)
        assert page.status_code == 200 and 'id="sign-out"' in page.text
        back = sign_out_with_requests(idp.end_session_url(
            client_id="gateway", post_logout_redirect_uri=POST_LOGOUT_REDIRECT_URI, state="bye"), session=browser)
        assert back == POST_LOGOUT_REDIRECT_URI + "?state=bye"

        # Signed out at the IdP: the form again, and the old access token is revoked.
        answer = browser.get(idp.authorize_url(code_challenge=challenge), allow_redirects=True, timeout=15)
        assert urlsplit(answer.url).path.startswith("/interaction/") and 'id="idp-login"' in answer.text
        assert first.session.get(idp.discovery()["userinfo_endpoint"], timeout=15).status_code == 401


def test_logout_with_id_token_hint_and_without_client(idp):
    with recording_session() as browser:
        flow = authorization_code_flow(idp, "gateway", "alice", browser_session=browser)
        back = sign_out_with_requests(idp.end_session_url(
            client_id=None, id_token_hint=flow.token["id_token"], post_logout_redirect_uri=POST_LOGOUT_REDIRECT_URI),
            session=browser)
        assert back == POST_LOGOUT_REDIRECT_URI
    with recording_session() as browser:
        authorization_code_flow(idp, "gateway", "alice", browser_session=browser)
        # Neither client_id nor id_token_hint: post_logout_redirect_uri is ignored, the IdP's page ends it.
        back = sign_out_with_requests(idp.end_session_url(
            client_id=None, post_logout_redirect_uri=POST_LOGOUT_REDIRECT_URI), session=browser)
        assert back == idp.issuer + "/session/end/success"
        # An unregistered post_logout_redirect_uri is an error page, not a redirect.
        answer = browser.get(idp.end_session_url(post_logout_redirect_uri="http://evil.test/"), timeout=15)
        assert answer.status_code == 400 and "post_logout_redirect_uri not registered" in answer.text


def test_rotate_changes_the_kid_of_new_id_tokens(certified_idp):  # noqa: F811
    idp = certified_idp()
    before = authorization_code_flow(idp).token["id_token"]
    old_kid = verify_id_token(idp, before, "gateway")[0]["kid"]
    assert old_kid == idp.kids["RS256"]

    new_kids = idp.rotate()
    assert new_kids["RS256"] != old_kid
    after = authorization_code_flow(idp).token["id_token"]
    assert verify_id_token(idp, after, "gateway")[0]["kid"] == new_kids["RS256"]
    published = {k["kid"] for k in idp.jwks()["keys"]}
    assert {old_kid, new_kids["RS256"]} <= published
    verify_id_token(idp, before, "gateway")  # the old key is still published

    idp.rotate(retain=0)
    assert old_kid not in {k["kid"] for k in idp.jwks()["keys"]}
    assert len(idp.jwks()["keys"]) == 3


def test_clock_offset_issues_id_tokens_from_the_future(certified_idp):  # noqa: F811
    idp = certified_idp(clock_offset=300)
    _, claims = verify_id_token(idp, authorization_code_flow(idp).token["id_token"], "gateway", check_times=False)
    assert abs(claims["iat"] - (time.time() + 300)) < 10, claims
    idp.set_clock(0)
    _, claims = verify_id_token(idp, authorization_code_flow(idp).token["id_token"], "gateway")
    assert abs(claims["iat"] - time.time()) < 10, claims


def test_groups_in_id_token_option(certified_idp):  # noqa: F811
    idp = certified_idp(groups_in_id_token=True)
    _, claims = verify_id_token(idp, authorization_code_flow(idp).token["id_token"], "gateway")
    assert claims["groups"] == ["sales", "everyone"] and "email" not in claims

    everything = certified_idp(conform_id_token_claims=False)
    _, claims = verify_id_token(everything, authorization_code_flow(everything).token["id_token"], "gateway")
    assert claims["email"] == "alice@acme.example" and claims["groups"] == ["sales", "everyone"]


def test_put_account_and_a_quiet_stdout(idp):
    idp.put_account("carol", {"email": "carol@other.example", "email_verified": True, "groups": "single"})
    flow = authorization_code_flow(idp, "gateway", "carol")
    assert flow.userinfo(idp)["groups"] == "single"
    assert "carol" in idp.state()["accounts"]
    assert "oidc-provider" in idp.log()  # its notices went to the log (stderr), not stdout


def test_missing_node_modules_skips_with_a_reason(monkeypatch, tmp_path):
    import certified_idp as harness

    monkeypatch.setattr(harness, "OIDC_PROVIDER_PACKAGE", tmp_path / "nowhere")
    # No real `npm ci` here: it empties tests/node_modules while the other xdist worker's
    # browser and OIDC tests are using it.
    monkeypatch.setattr(harness, "_install_tried", [True])
    with pytest.raises(pytest.skip.Exception, match="npm ci --prefix tests"):
        harness.require_certified_idp()


# ------------------------------------------------------------------ Chromium
CHROMIUM = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not installed at {CHROMIUM}")
def test_browser_sign_in_silent_sso_and_sign_out(idp):
    playwright_api = pytest.importorskip("playwright.sync_api")
    from conftest import record_browser
    from gateway.sim.server import ServerThread

    def relying_party(environ, start_response):  # stands in at http://gateway.test for the redirects
        start_response("200 OK", [("Content-Type", "text/html")])
        return [b"<p id='rp'>back at the RP</p>"]

    with ServerThread(relying_party) as rp, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
            "--disable-background-networking", "--disable-component-update",
            f"--host-resolver-rules=MAP gateway.test:80 127.0.0.1:{rp.port}"])
        try:
            record_browser(browser)
            page = browser.new_page()
            _, challenge = pkce_pair()
            page.goto(idp.authorize_url(code_challenge=challenge, state="b1"))
            sign_in_with_browser(page, "alice")
            page.wait_for_url(REDIRECT_URI + "?**")
            assert callback_params(page.url)["state"] == "b1" and "code" in callback_params(page.url)

            page.goto(idp.authorize_url(code_challenge=challenge, state="b2"))  # silent: no form
            page.wait_for_url(REDIRECT_URI + "?**")
            assert callback_params(page.url)["state"] == "b2"

            page.goto(idp.end_session_url(post_logout_redirect_uri=POST_LOGOUT_REDIRECT_URI, state="b3"))
            sign_out_with_browser(page)
            page.wait_for_url(POST_LOGOUT_REDIRECT_URI + "?state=b3")

            page.goto(idp.authorize_url(code_challenge=challenge, state="b4"))
            sign_in_with_browser(page, "alice", cancel=True)
            page.wait_for_url(REDIRECT_URI + "?**")
            assert callback_params(page.url)["error"] == "access_denied"
        finally:
            browser.close()
