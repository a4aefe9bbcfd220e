"""OIDC against an OpenID-Certified provider (panva's oidc-provider, Node, on loopback).

The provider follows the spec where oidc-provider-mock is lenient: scope claims (email,
groups) come from userinfo, not the ID token; ``iss`` is in every authorization response
(RFC 9207); sign-out ends at its end-session endpoint with a confirmation page. Journeys
that a browser enforces (CSP form-action on sign-out, the IdP's session cookie) run in
Chromium; the rest talk HTTP to the provider through the gateway's test client.
"""
import logging
import re
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from werkzeug.wrappers import Request, Response

from certified_idp import (DEFAULT_ACCOUNTS, certified_idp, certified_idp_module, client_key,  # noqa: F401
                           client_metadata, public_jwks, sign_in_with_browser, sign_in_with_requests,
                           sign_out_with_browser)
from conftest import LEAKS, base_config, free_port
from gateway import create_app
from gateway.sim.server import ServerThread
from test_browser import CHROMIUM, browser  # noqa: F401  (the module-scoped Chromium fixture)

PUBLIC = "http://gateway.test"
SECRET = "interop-client-secret-0123456789"
ACCOUNTS = {
    **DEFAULT_ACCOUNTS,
    # Matched by group only: the rules know no "carol" and no "@partner.example" domain.
    "carol": {"email": "carol@partner.example", "email_verified": True, "groups": ["emea"]},
    # Entra-like: no email claim, a upn the tenant's administrators set.
    "dave": {"upn": "alice@acme.example", "preferred_username": "alice@acme.example"},
}


@pytest.fixture(autouse=True)
def insecure_transport_for_loopback(monkeypatch):
    # The provider speaks plain HTTP on loopback; production issuers are https.
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    LEAKS.secret(SECRET, "OIDC client secret")


@pytest.fixture(scope="module")
def idp(certified_idp_module):  # noqa: F811
    return certified_idp_module(clients=[client_metadata("gateway", secret=SECRET)], accounts=ACCOUNTS)


def oidc_app(make_app, idp, tmp_path, **settings):
    config = dict(GATEWAY_AUTH_MODE="oidc", OIDC_ISSUER=idp.issuer, OIDC_CLIENT_ID="gateway",
                  OIDC_CLIENT_SECRET=SECRET, GATEWAY_PUBLIC_URL=PUBLIC, OIDC_SCOPES="openid email profile groups",
                  GATEWAY_STATE_DIR=str(tmp_path / "state"), GATEWAY_EMBED_MODE="proxy")
    config.update(settings)
    return make_app(**config)


def login(client, *, login_as="alice", tamper=None):
    """The whole journey with plain HTTP: gateway → IdP sign-in → callback. Returns the callback answer."""
    first = client.get("/")
    assert first.status_code == 302, first.get_data(as_text=True)[:300]
    to_idp = client.get(first.headers["Location"])
    assert to_idp.status_code == 302
    back = sign_in_with_requests(to_idp.headers["Location"], login_as)
    parts = urlsplit(back)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC and parts.path == "/auth/callback", back
    query = parts.query if tamper is None else tamper(parts.query)
    return client.get(parts.path + "?" + query)


def signed_in_page(client, callback):
    assert callback.status_code == 302, callback.get_data(as_text=True)[:400]
    page = client.get(callback.headers["Location"])
    assert page.status_code == 200, page.get_data(as_text=True)[:400]
    return page.get_data(as_text=True)


# ------------------------------------------------------------------ claims
def test_claims_only_in_userinfo_sign_the_user_in(make_app, idp, tmp_path):
    client = oidc_app(make_app, idp, tmp_path).test_client()
    page = signed_in_page(client, login(client))
    assert "Sales EMEA" in page


def test_a_user_whose_groups_arrive_only_from_userinfo_sees_their_teams_dashboard(make_app, idp, tmp_path):
    client = oidc_app(make_app, idp, tmp_path).test_client()
    page = signed_in_page(client, login(client, login_as="carol"))
    assert "Sales EMEA" in page


def test_userinfo_never_reads_the_id_token_only(make_app, idp, tmp_path, caplog):
    client = oidc_app(make_app, idp, tmp_path, OIDC_USERINFO="never").test_client()
    with caplog.at_level(logging.WARNING):
        answer = login(client)
    assert answer.status_code == 401 and "Sign-in did not work" in answer.get_data(as_text=True)
    assert any("no well-formed email in the claims email" in r.getMessage() for r in caplog.records)


def test_an_email_fallback_claim_serves_idps_without_email(make_app, idp, tmp_path):
    client = oidc_app(make_app, idp, tmp_path, OIDC_EMAIL_CLAIM="email,upn,preferred_username").test_client()
    assert "Sales EMEA" in signed_in_page(client, login(client, login_as="dave"))


def test_an_unverified_email_is_refused_by_default(make_app, idp, tmp_path):
    client = oidc_app(make_app, idp, tmp_path).test_client()
    answer = login(client, login_as="bob")
    assert answer.status_code == 403 and "Sign-in was refused" in answer.get_data(as_text=True)


# ------------------------------------------------------------------ signing and keys
@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256"])
def test_id_tokens_signed_with_each_algorithm_are_accepted(make_app, certified_idp, tmp_path, alg):  # noqa: F811
    provider = certified_idp(clients=[client_metadata("gateway", secret=SECRET, alg=alg)], accounts=ACCOUNTS)
    client = oidc_app(make_app, provider, tmp_path).test_client()
    assert "Sales EMEA" in signed_in_page(client, login(client))


def test_key_rotation_during_a_session(make_app, certified_idp, tmp_path):  # noqa: F811
    provider = certified_idp(clients=[client_metadata("gateway", secret=SECRET)], accounts=ACCOUNTS)
    app = oidc_app(make_app, provider, tmp_path)
    first = app.test_client()
    signed_in_page(first, login(first))
    provider.rotate(retain=0)  # the key that signed the first ID token is gone from the JWKS
    assert first.get("/").status_code == 200  # our session does not depend on the IdP's keys
    second = app.test_client()
    assert "Sales EMEA" in signed_in_page(second, login(second))  # the new kid is fetched


@pytest.mark.parametrize("method", ["client_secret_post", "private_key_jwt-RS256", "private_key_jwt-ES256"])
def test_client_authentication_methods(make_app, certified_idp, tmp_path, method):  # noqa: F811
    from cryptography.hazmat.primitives import serialization

    settings = {}
    if method == "client_secret_post":
        meta = client_metadata("gateway", secret=SECRET, auth_method=method)
        settings["OIDC_CLIENT_AUTH_METHOD"] = method
    else:
        alg = method.split("-")[1]
        key = client_key(alg)
        meta = client_metadata("gateway", secret=None, auth_method="private_key_jwt", jwks=public_jwks(key))
        pem = tmp_path / "client-key.pem"
        private = key.get_private_key() if hasattr(key, "get_private_key") else key.private_key
        pem.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        settings.update(OIDC_CLIENT_AUTH_METHOD="private_key_jwt", OIDC_CLIENT_KEY_FILE=str(pem),
                        OIDC_CLIENT_KEY_ID=key.kid, OIDC_CLIENT_SECRET="")
    provider = certified_idp(clients=[meta], accounts=ACCOUNTS)
    client = oidc_app(make_app, provider, tmp_path, **settings).test_client()
    assert "Sales EMEA" in signed_in_page(client, login(client))


def test_a_client_authentication_method_the_idp_does_not_offer_is_one_line_in_check(make_app, idp, tmp_path):
    app = oidc_app(make_app, idp, tmp_path, OIDC_CLIENT_AUTH_METHOD="client_secret_post")
    from gateway.identity.idp import auth_method_problem

    with app.app_context():
        from gateway.identity.idp import metadata

        meta = dict(metadata())
    assert auth_method_problem(meta, "client_secret_post") is None
    meta["token_endpoint_auth_methods_supported"] = ["private_key_jwt"]
    problem = auth_method_problem(meta, "client_secret_post")
    assert problem and "\n" not in problem and "private_key_jwt" in problem


# ------------------------------------------------------------------ refusals
def test_consent_cancelled_is_a_plain_refusal(make_app, idp, tmp_path):
    client = oidc_app(make_app, idp, tmp_path).test_client()
    first = client.get("/")
    to_idp = client.get(first.headers["Location"])
    back = sign_in_with_requests(to_idp.headers["Location"], "alice", action="cancel")
    assert "error=access_denied" in back
    answer = client.get(urlsplit(back).path + "?" + urlsplit(back).query)
    assert answer.status_code == 403 and "Sign-in was refused" in answer.get_data(as_text=True)
    assert 'href="/login' in answer.get_data(as_text=True)  # a way to try again, not a loop


def test_a_replayed_callback_is_refused(make_app, idp, tmp_path):
    client = oidc_app(make_app, idp, tmp_path).test_client()
    first = client.get("/")
    to_idp = client.get(first.headers["Location"])
    back = urlsplit(sign_in_with_requests(to_idp.headers["Location"], "alice"))
    assert client.get(back.path + "?" + back.query).status_code == 302
    replay = client.get(back.path + "?" + back.query)
    assert replay.status_code == 400 and "expired" in replay.get_data(as_text=True)


def _set_iss(value):
    def tamper(query):
        params = {k: v[0] for k, v in parse_qs(query).items()}
        if value is None:
            params.pop("iss")
        else:
            params["iss"] = value
        return urlencode(params)
    return tamper


@pytest.mark.parametrize("iss", [None, "http://127.0.0.1:1/other-issuer"], ids=["missing", "wrong"])
def test_rfc9207_a_missing_or_wrong_iss_is_refused(make_app, idp, tmp_path, caplog, iss):
    client = oidc_app(make_app, idp, tmp_path).test_client()
    with caplog.at_level(logging.WARNING):
        answer = login(client, tamper=_set_iss(iss))
    assert answer.status_code == 401 and "Sign-in did not work" in answer.get_data(as_text=True)
    assert any("RFC 9207" in r.getMessage() for r in caplog.records)
    assert client.get("/").status_code == 302  # not signed in


def test_clock_skew_beyond_the_leeway_is_refused_with_a_line_naming_the_clock(make_app, certified_idp,  # noqa: F811
                                                                            tmp_path, caplog):
    provider = certified_idp(clients=[client_metadata("gateway", secret=SECRET)], accounts=ACCOUNTS,
                             clock_offset=300)
    client = oidc_app(make_app, provider, tmp_path).test_client()
    with caplog.at_level(logging.WARNING):
        answer = login(client)
    assert answer.status_code == 401
    lines = [r.getMessage() for r in caplog.records if "in the future" in r.getMessage()]
    assert lines and re.search(r"issued (29\d|30\d) s in the future \(leeway 120 s\): check the IdP's clock", lines[0])
    provider.set_clock(60)  # within the leeway
    assert "Sales EMEA" in signed_in_page(client, login(client))


def test_groups_overage_is_named_in_the_log(make_app, idp, tmp_path, caplog):
    from gateway.identity.oidc import OVERAGE_HINT, user_from_claims

    app = oidc_app(make_app, idp, tmp_path)
    claims = {"iss": idp.issuer, "sub": "x", "email": "erin@acme.example", "email_verified": True,
              "_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": "https://graph"}}}
    with app.test_request_context(), caplog.at_level(logging.WARNING):
        user = user_from_claims(claims)
    assert user.groups == ()
    assert any(OVERAGE_HINT in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ in Chromium
@pytest.fixture
def live_gateway(sim, tmp_path):
    """``live_gateway(port, **settings)``: the gateway on a known loopback port, so the IdP (or a
    partner's proxy) can send the browser back to it."""
    started = []

    def start(port, **settings):
        config = base_config(sim, GATEWAY_COOKIE_SECURE="false", GATEWAY_PUBLIC_URL=f"http://127.0.0.1:{port}",
                             GATEWAY_STATE_DIR=str(tmp_path / "state"), GATEWAY_EMBED_MODE="proxy", **settings)
        server = ServerThread(create_app(config), port=port).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def _require_chromium():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM}")


def _csp_violations(console):
    return [line for line in console if "Content Security Policy" in line]


@pytest.mark.browser
def test_sign_in_dashboard_sign_out_at_the_idp_and_the_next_visit_asks_again(browser, certified_idp,  # noqa: F811
                                                                            live_gateway):
    _require_chromium()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    provider = certified_idp(clients=[client_metadata("gateway", secret=SECRET,
                                                      redirect_uris=[public + "/auth/callback"],
                                                      post_logout_redirect_uris=[public + "/signed-out"])],
                             accounts=ACCOUNTS)
    server = live_gateway(port, GATEWAY_AUTH_MODE="oidc", OIDC_ISSUER=provider.issuer, OIDC_CLIENT_ID="gateway",
                          OIDC_CLIENT_SECRET=SECRET, OIDC_SCOPES="openid email profile groups")
    context = browser.new_context()
    page = context.new_page()
    console = []
    page.on("console", lambda m: console.append(m.text))
    page.goto(server.url + "/")
    sign_in_with_browser(page, "carol")  # her groups come only from userinfo
    page.wait_for_url(re.compile(re.escape(server.url) + r"/(\?team=[^&]+)?$"), timeout=15000)  # it names its team
    page.frame_locator("iframe#dashboard").locator("#app[data-state=ready]").wait_for(timeout=15000)
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(re.escape(provider.issuer) + r"/session/end.*"), timeout=15000)
    sign_out_with_browser(page)
    page.wait_for_url(re.compile(re.escape(server.url) + r"/signed-out.*"), timeout=15000)
    assert page.get_by_role("heading", name="You are signed out").is_visible()
    assert _csp_violations(console) == []
    # The next visit asks the IdP again: its session ended too, so there is no silent sign-in.
    page.goto(server.url + "/")
    page.wait_for_selector("form#idp-login", timeout=15000)
    context.close()


@pytest.mark.browser
def test_sign_out_continues_to_a_cross_origin_logout_url(browser, live_gateway):  # noqa: F811
    _require_chromium()

    @Request.application
    def proxy_sign_out(request):
        return Response("<!doctype html><title>proxy</title><h1>Signed out of the partner's SSO</h1>",
                        mimetype="text/html")

    other = ServerThread(proxy_sign_out).start()
    try:
        server = live_gateway(free_port(), GATEWAY_LOGOUT_URL=other.url + "/oauth2/sign_out")
        context = browser.new_context(extra_http_headers={"X-Forwarded-Email": "alice@acme.example"})
        page = context.new_page()
        console = []
        page.on("console", lambda m: console.append(m.text))
        page.goto(server.url + "/")
        page.frame_locator("iframe#dashboard").locator("#app[data-state=ready]").wait_for(timeout=15000)
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(other.url + "/oauth2/sign_out", timeout=15000)
        assert page.get_by_role("heading", name="Signed out of the partner's SSO").is_visible()
        assert _csp_violations(console) == []
        context.close()
    finally:
        other.stop()


# ------------------------------------------------------------------ the command line
def _oidc_env(idp, **extra):
    # PUBLIC is plain HTTP on a host that is not loopback: the check fails a Secure cookie there.
    return dict(GATEWAY_AUTH_MODE="oidc", OIDC_ISSUER=idp.issuer, OIDC_CLIENT_ID="gateway",
                OIDC_CLIENT_SECRET=SECRET, GATEWAY_PUBLIC_URL=PUBLIC, AUTHLIB_INSECURE_TRANSPORT="1",
                GATEWAY_COOKIE_SECURE="false", **extra)


def test_check_reports_the_idp_and_a_client_authentication_mismatch_in_one_line(sim, idp, tmp_path):
    from test_ops import flask_cli

    ok = flask_cli(sim, "check", **_oidc_env(idp))
    assert ok.returncode == 0, ok.stderr
    assert f"IdP: ok ({idp.issuer}, client authentication client_secret_basic, RFC 9207 iss checked)" in ok.stdout


def test_check_names_a_method_the_idp_does_not_offer(sim, certified_idp):  # noqa: F811
    provider = certified_idp(clients=[client_metadata("gateway", secret=SECRET)], accounts=ACCOUNTS,
                             client_auth_methods=["client_secret_basic"])
    from test_ops import flask_cli

    meta = provider.discovery()
    if "client_secret_post" in meta.get("token_endpoint_auth_methods_supported", []):
        pytest.fail("the provider still offers client_secret_post; the harness option did not apply")
    result = flask_cli(sim, "check", **_oidc_env(provider, OIDC_CLIENT_AUTH_METHOD="client_secret_post"))
    assert result.returncode == 1
    [line] = [x for x in result.stderr.splitlines() if "MISMATCH" in x]
    assert "OIDC_CLIENT_AUTH_METHOD=client_secret_post is not in the IdP's token_endpoint_auth_methods_supported" in line


def test_a_method_the_idp_does_not_offer_is_logged_at_start_up(make_app, certified_idp, tmp_path, caplog):  # noqa: F811
    import time

    provider = certified_idp(clients=[client_metadata("gateway", secret=SECRET)], accounts=ACCOUNTS,
                             client_auth_methods=["client_secret_basic"])
    with caplog.at_level(logging.ERROR):
        oidc_app(make_app, provider, tmp_path, OIDC_CLIENT_AUTH_METHOD="client_secret_post")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("token_endpoint_auth_methods_supported" in r.getMessage()
                                                       for r in caplog.records):
            time.sleep(0.05)
    assert any("OIDC_CLIENT_AUTH_METHOD=client_secret_post is not in" in r.getMessage() for r in caplog.records)


def test_explain_reads_claims_and_names_a_groups_overage(sim, idp, tmp_path):
    import json

    from test_ops import flask_cli

    claims = tmp_path / "claims.json"
    claims.write_text(json.dumps({"sub": "x", "upn": "carol@partner.example",
                                  "_claim_names": {"groups": "src1"}}))
    result = flask_cli(sim, "explain", "--claims", str(claims),
                       **_oidc_env(idp, OIDC_EMAIL_CLAIM="email,upn"))
    assert "groups overage" in result.stdout and "use an app-role or group filter" in result.stdout
    assert result.returncode == 1 and "No rule matches carol@partner.example" in result.stdout


@pytest.mark.parametrize("claims, refusal", [
    ({"email": ["x@acme.example"], "upn": "alice@acme.example"}, "the email claim is not one well-formed"),
    ({"email": "alice@acme.example", "email_verified": False}, "email_verified is not true"),
])
def test_explain_reads_claims_exactly_as_a_sign_in_does(sim, idp, tmp_path, claims, refusal):
    """Found by review: explain used its own claim parsing and showed dashboards sign-in refuses."""
    import json

    from test_ops import flask_cli

    path = tmp_path / "claims.json"
    path.write_text(json.dumps({"sub": "x", "groups": [["sales-us"]], **claims}))
    result = flask_cli(sim, "explain", "--claims", str(path), **_oidc_env(idp, OIDC_EMAIL_CLAIM="email,upn"))
    assert result.returncode == 1 and f"The sign-in would be refused: {refusal}" in result.stdout
    assert "They would see" not in result.stdout


# ------------------------------------------------------------------ found by review
def test_twenty_unfinished_sign_ins_do_not_lock_the_user_out(make_app, idp, tmp_path):
    client = oidc_app(make_app, idp, tmp_path).test_client()
    for _ in range(20):  # tabs opened while signed out, never finished
        client.get(client.get("/").headers["Location"])
    with client.session_transaction() as session:
        assert len([k for k in session if k.startswith("_state_idp_")]) <= 2
    assert "Sales EMEA" in signed_in_page(client, login(client))


def test_the_last_two_unfinished_sign_ins_still_complete_an_older_one_has_expired(make_app, idp, tmp_path):
    client = oidc_app(make_app, idp, tmp_path).test_client()

    def start():  # a tab opened while signed out: its way to the IdP
        return client.get(client.get("/").headers["Location"]).headers["Location"]

    def finish(to_idp):
        parts = urlsplit(sign_in_with_requests(to_idp, "alice"))
        return client.get(parts.path + "?" + parts.query)

    oldest, older, _newest = start(), start(), start()
    assert finish(oldest).status_code == 400  # forgotten: "This sign-in attempt has expired"
    assert "Sales EMEA" in signed_in_page(client, finish(older))  # the other tab's attempt still counts


def test_a_refused_client_is_a_misconfiguration_page_not_an_expired_sign_in(make_app, idp, tmp_path):
    client = oidc_app(make_app, idp, tmp_path, OIDC_CLIENT_SECRET="not-the-registered-secret-123").test_client()
    answer = login(client)
    assert answer.status_code == 502 and "not set up correctly" in answer.get_data(as_text=True)


@pytest.mark.parametrize("name", ["iss", "code", "state"])
def test_a_repeated_response_parameter_is_refused(make_app, idp, tmp_path, name):
    client = oidc_app(make_app, idp, tmp_path).test_client()

    def repeat(query):
        value = parse_qs(query)[name][0]
        return query + "&" + urlencode({name: value})

    answer = login(client, tamper=repeat)
    assert answer.status_code == 401 and client.get("/").status_code == 302


def test_a_malformed_email_claim_is_refused_not_skipped(make_app, certified_idp, tmp_path):  # noqa: F811
    provider = certified_idp(clients=[client_metadata("gateway", secret=SECRET)], accounts={
        "eve": {"email": "not-an-address", "email_verified": True, "upn": "bob@acme.example"}})
    client = oidc_app(make_app, provider, tmp_path, OIDC_EMAIL_CLAIM="email,upn").test_client()
    answer = login(client, login_as="eve")
    assert answer.status_code == 401


def test_an_id_token_too_large_for_the_cookie_is_not_kept_for_the_logout_hint(make_app, certified_idp, tmp_path,  # noqa: F811
                                                                             caplog):
    groups = [f"{i:08x}-0000-0000-0000-000000000000" for i in range(80)] + ["emea"]
    provider = certified_idp(clients=[client_metadata("gateway", secret=SECRET)], groups_in_id_token=True,
                             accounts={"frank": {"email": "frank@partner.example", "email_verified": True,
                                                 "groups": groups}})
    client = oidc_app(make_app, provider, tmp_path, OIDC_LOGOUT_HINT="id_token_hint").test_client()
    with caplog.at_level(logging.WARNING):
        answer = login(client, login_as="frank")
    assert answer.status_code == 302
    assert max(len(c) for c in answer.headers.getlist("Set-Cookie")) < 4000
    assert any("too large to keep" in r.getMessage() for r in caplog.records)
    assert "Sales EMEA" in client.get("/").get_data(as_text=True)


def test_authlib_never_logs_below_info():
    """Authlib logs the PKCE code verifier at DEBUG; GATEWAY_LOG_LEVEL=DEBUG must not bring it out."""
    import subprocess
    import sys

    from conftest import ROOT

    check = ("import logging; from gateway.ops import logwriter; logwriter.configure('DEBUG', 'json'); "
             "print(logging.getLogger('authlib.integrations.base_client.sync_app').getEffectiveLevel())")
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and int(out.stdout.strip()) >= logging.INFO, out.stderr
