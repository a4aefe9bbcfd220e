"""Login modes and the session: trusted headers, fixation, demo login, logout."""
import re

import pytest

from conftest import user_headers


def csrf_from(response) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', response.get_data(as_text=True)).group(1)


def test_trusted_proxy_headers_sign_the_user_in(client):
    response = client.get("/", headers=user_headers("alice@acme.example"))
    assert response.status_code == 200
    assert "alice@acme.example" in response.get_data(as_text=True)


def test_no_identity_gets_401_page(client):
    response = client.get("/")
    assert response.status_code == 401
    assert "You are not signed in" in response.get_data(as_text=True)


def test_identity_headers_from_an_untrusted_peer_are_ignored(client):
    response = client.get("/", headers=user_headers("alice@acme.example"),
                          environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert response.status_code == 401


def test_trusted_proxies_setting_is_respected(make_app):
    app = make_app(GATEWAY_TRUSTED_PROXIES="10.1.0.0/16")
    client = app.test_client()
    assert client.get("/", headers=user_headers("alice@acme.example")).status_code == 401
    ok = client.get("/", headers=user_headers("alice@acme.example"), environ_base={"REMOTE_ADDR": "10.1.2.3"})
    assert ok.status_code == 200


@pytest.mark.parametrize("value", ["alice@acme.example, bob@acme.example", "not-an-email",
                                   "alice@acme.example@evil.example", ""])
def test_malformed_identity_header_is_not_an_identity(client, value):
    assert client.get("/", headers={"X-Forwarded-Email": value}).status_code == 401


def test_custom_header_names(make_app):
    client = make_app(GATEWAY_USER_HEADER="X-Auth-Request-Email",
                      GATEWAY_GROUPS_HEADER="X-Auth-Request-Groups").test_client()
    assert client.get("/", headers=user_headers("alice@acme.example")).status_code == 401
    response = client.get("/", headers={"X-Auth-Request-Email": "nobody@else.example",
                                        "X-Auth-Request-Groups": "us"})
    assert response.status_code == 200 and "Sales US" in response.get_data(as_text=True)


def test_changed_identity_drops_the_old_session(client):
    client.get("/select", headers=user_headers("bob@acme.example", "emea"))
    with client.session_transaction() as s:
        old_sid = s["sid"]
        s["subtenant"] = "acme/sales-emea"
    client.get("/", headers=user_headers("alice@acme.example"))
    with client.session_transaction() as s:
        assert s["email"] == "alice@acme.example"
        assert s["sid"] != old_sid and "subtenant" not in s


def test_session_alone_is_not_enough_in_header_mode(client):
    assert client.get("/", headers=user_headers("alice@acme.example")).status_code == 200
    # The proxy stopped vouching (its session ended): our cookie must not carry on.
    assert client.get("/").status_code == 401


def test_session_cookie_flags(client):
    response = client.get("/", headers=user_headers("alice@acme.example"))
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie
    assert "Domain" not in cookie and "Path=/" in cookie


def cookie_value(response, name: str) -> str:
    [header] = [h for h in response.headers.getlist("Set-Cookie") if h.startswith(name + "=")]
    return header.split(";", 1)[0].split("=", 1)[1]


def test_the_session_cookie_is_flasks_own_format_both_ways(make_app):
    """A cookie the gateway wrote opens in stock Flask with the same key, and one stock Flask
    wrote opens here: the session interface changes how fast, never what is signed."""
    from flask import request
    from flask.sessions import SecureCookieSessionInterface

    app = make_app()
    name, stock, ours = app.config["SESSION_COOKIE_NAME"], SecureCookieSessionInterface(), app.session_interface
    written = cookie_value(app.test_client().get("/", headers=user_headers("alice@acme.example")), name)
    assert not written.startswith(".")  # small: not worth zlib
    with app.test_request_context("/", headers={"Cookie": f"{name}={written}"}):
        assert stock.open_session(app, request)["email"] == "alice@acme.example"
    for groups in ([], [f"group-{n:03d}" for n in range(60)]):
        session = stock.session_class({"sid": "s", "email": "bob@acme.example", "groups": groups})
        session.modified = True
        response = app.response_class()
        with app.test_request_context("/"):
            ours.save_session(app, session, response)
            stock.save_session(app, session, stock_response := app.response_class())
        assert cookie_value(response, name).startswith(".") == bool(groups)  # large: compressed
        for value in (cookie_value(response, name), cookie_value(stock_response, name)):
            with app.test_request_context("/", headers={"Cookie": f"{name}={value}"}):
                assert dict(ours.open_session(app, request)) == dict(session)
                assert dict(stock.open_session(app, request)) == dict(session)
    with app.test_request_context("/", headers={"Cookie": f"{name}={written[:-2]}xx"}):
        assert dict(ours.open_session(app, request)) == {}  # a bad signature opens nothing


def test_logout_deletes_the_cookie_with_its_attributes(client):
    page = client.get("/", headers=user_headers("alice@acme.example"))
    response = client.post("/logout", data={"csrf_token": csrf_from(page)},
                           headers=user_headers("alice@acme.example", **{"Sec-Fetch-Site": "same-origin"}))
    [cookie] = [h for h in response.headers.getlist("Set-Cookie") if "zg_session=" in h]
    assert "Expires=Thu, 01 Jan 1970" in cookie and "Secure" in cookie and "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie and "Cookie" in response.headers["Vary"]


def test_logout_needs_a_csrf_token(client):
    client.get("/", headers=user_headers("alice@acme.example"))
    assert client.post("/logout", headers=user_headers("alice@acme.example")).status_code == 403


def test_logout_refuses_cross_site(client):
    page = client.get("/", headers=user_headers("alice@acme.example"))
    token = csrf_from(page)
    response = client.post("/logout", data={"csrf_token": token},
                           headers=user_headers("alice@acme.example", **{"Sec-Fetch-Site": "cross-site"}))
    assert response.status_code == 403
    response = client.post("/logout", data={"csrf_token": token},
                           headers=user_headers("alice@acme.example", Origin="https://evil.example"))
    assert response.status_code == 403


def test_logout_clears_the_session_and_goes_to_the_proxy_sign_out(make_app):
    client = make_app(GATEWAY_LOGOUT_URL="/oauth2/sign_out").test_client()
    page = client.get("/", headers=user_headers("alice@acme.example"))
    response = client.post("/logout", data={"csrf_token": csrf_from(page)},
                           headers=user_headers("alice@acme.example", **{"Sec-Fetch-Site": "same-origin"}))
    # Post/Redirect/Get: the sign-out continues from a same-origin page (CSP form-action allows
    # only 'self', and it covers every redirect of a form post).
    assert response.status_code == 303 and response.headers["Location"].startswith("/signed-out?bye=")
    with client.session_transaction() as s:
        assert dict(s) == {}
    onward = client.get(response.headers["Location"])
    assert 'id="continue-signout" class="button" href="/oauth2/sign_out"' in onward.get_data(as_text=True)
    # The ticket is signed and short-lived: a forged or stale one continues nowhere.
    assert "continue-signout" not in client.get("/signed-out?bye=forged").get_data(as_text=True)


# ------------------------------------------------------------------ demo mode
@pytest.fixture
def demo(make_app):
    return make_app(GATEWAY_AUTH_MODE="demo", GATEWAY_DEBUG="true", GATEWAY_COOKIE_SECURE="false").test_client()


def test_demo_login_lists_the_users_and_restores_the_page(demo):
    first = demo.get("/select")
    assert first.status_code == 302 and first.headers["Location"].startswith("/login?next=/select")
    page = demo.get(first.headers["Location"])
    text = page.get_data(as_text=True)
    assert "alice@acme.example" in text and "bob@acme.example" in text
    done = demo.post("/login", data={"email": "alice@acme.example", "next": "/select",
                                     "csrf_token": csrf_from(page)})
    assert done.status_code == 302 and done.headers["Location"] == "/select"


def test_demo_login_renews_the_session(demo):
    demo.get("/login")  # creates the pre-login session and its CSRF token
    with demo.session_transaction() as s:
        s["planted"] = "by-attacker"
        before = dict(s)
    demo.post("/login", data={"email": "alice@acme.example", "csrf_token": before["csrf"]})
    with demo.session_transaction() as s:
        assert "planted" not in s and s["csrf"] != before["csrf"]


def test_demo_login_refuses_unknown_users(demo):
    page = demo.get("/login")
    response = demo.post("/login", data={"email": "mallory@evil.example", "csrf_token": csrf_from(page)})
    assert response.status_code == 401


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example/", "/\\evil.example",
                                    "/\t/evil.example", "javascript:alert(1)"])
def test_demo_login_never_redirects_off_site(demo, target):
    page = demo.get("/login")
    response = demo.post("/login", data={"email": "alice@acme.example", "next": target,
                                         "csrf_token": csrf_from(page)})
    assert response.headers["Location"] == "/"


def test_login_page_is_not_there_in_header_mode(client):
    assert client.get("/login").status_code == 404


def test_opaque_origin_needs_same_origin_fetch_metadata(client):
    page = client.get("/", headers=user_headers("alice@acme.example"))
    token = csrf_from(page)
    refused = client.post("/logout", data={"csrf_token": token},
                          headers=user_headers("alice@acme.example", Origin="null"))
    assert refused.status_code == 403
    accepted = client.post("/logout", data={"csrf_token": token},
                           headers=user_headers("alice@acme.example", Origin="null",
                                                **{"Sec-Fetch-Site": "same-origin"}))
    assert accepted.status_code == 303
