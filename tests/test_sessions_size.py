"""A user in 500 groups (GUID-named, as Entra ID sends them) keeps a working session in every mode.

Browsers drop a cookie over 4 KB, and a hand-off URL that long runs into the server's
request-line limit: the cookie keeps only the groups the rules name, and hand-offs can be POSTed.
"""
import time
import uuid

import jwt
import pytest

from conftest import SECRET_KEY, recording_session  # noqa: F401

GROUPS = [str(uuid.UUID(int=i)) for i in range(499)] + ["emea"]  # "emea" is named by a rule
HANDOFF_SECRET = "h" * 40
ISS, AUD = "https://app.partner.example", "zipteams-gateway"


def cookie_size(response) -> int:
    return max((len(v) for v in response.headers.getlist("Set-Cookie")), default=0)


def test_header_mode_keeps_no_groups_in_the_cookie(make_app):
    client = make_app(GATEWAY_EMBED_MODE="proxy").test_client()
    headers = {"X-Forwarded-Email": "carol@partner.example", "X-Forwarded-Groups": ",".join(GROUPS)}
    page = client.get("/", headers=headers)
    assert page.status_code == 200 and "Sales EMEA" in page.get_data(as_text=True)
    assert cookie_size(page) < 1024
    assert client.get("/dashboard/api/summary", headers=headers).get_json()["subtenant"] == "sales-emea"


def test_a_jwt_hand_off_with_500_groups_can_be_posted_and_keeps_a_small_cookie(gunicorn):
    server = gunicorn(workers=1, GATEWAY_AUTH_MODE="jwt", GATEWAY_EMBED_MODE="proxy", GATEWAY_COOKIE_SECURE="false",
                      GATEWAY_HANDOFF_SECRET=HANDOFF_SECRET, GATEWAY_HANDOFF_ISSUER=ISS, GATEWAY_HANDOFF_AUDIENCE=AUD)
    now = int(time.time())
    token = jwt.encode({"iss": ISS, "aud": AUD, "iat": now, "exp": now + 120, "jti": uuid.uuid4().hex,
                        "email": "carol@partner.example", "groups": GROUPS}, HANDOFF_SECRET, algorithm="HS256")
    assert len(token) > 16000  # too long for gunicorn's request line (414) as a query
    with recording_session() as http:
        answer = http.post(server.url + "/sso/jwt", data={"jwt": token, "return_to": "/"}, allow_redirects=False)
        assert answer.status_code == 303 and answer.headers["Location"] == "/"
        assert max(len(c) for c in answer.raw.headers.getlist("Set-Cookie")) < 1024
        page = http.get(server.url + "/")
        assert page.status_code == 200 and "Sales EMEA" in page.text
        summary = http.get(server.url + "/dashboard/api/summary")
        assert summary.json()["subtenant"] == "sales-emea"


def test_oidc_keeps_only_the_groups_the_rules_name(make_app, tmp_path, monkeypatch):
    pytest.importorskip("oidc_provider_mock")
    from test_oidc import CLIENT_ID, PUBLIC, login
    import oidc_provider_mock

    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
    with oidc_provider_mock.run_server_in_thread(port=0, require_nonce=True) as server:
        idp = f"http://localhost:{server.server_port}"
        app = make_app(GATEWAY_AUTH_MODE="oidc", GATEWAY_EMBED_MODE="proxy", OIDC_ISSUER=idp, OIDC_CLIENT_ID=CLIENT_ID,
                       OIDC_CLIENT_SECRET="client-secret", GATEWAY_PUBLIC_URL=PUBLIC,
                       GATEWAY_STATE_DIR=str(tmp_path / "state"))
        client = app.test_client()
        _, answer = login(client, idp, {"email": "carol@partner.example", "groups": GROUPS})
        assert answer.status_code == 302 and cookie_size(answer) < 1024
        with client.session_transaction() as session:
            assert session["groups"] == ["emea"]
        assert "Sales EMEA" in client.get("/").get_data(as_text=True)
