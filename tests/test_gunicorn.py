"""The gateway under real gunicorn, as deployed: many users, many workers, one token each."""
from concurrent.futures import ThreadPoolExecutor

from conftest import recording_session, user_headers

USERS = [(f"user{i}@us.acme.example", "Sales US") if i % 2 else (f"user{i}@emea.example", "Sales EMEA")
         for i in range(20)]


def test_two_workers_many_users_each_sees_only_their_subtenant(gunicorn, sim):
    server = gunicorn(workers=2, threads=8)

    def visit(n):
        email, team = USERS[n % len(USERS)]
        groups = "" if team == "Sales US" else "emea"
        with recording_session() as http:
            response = http.get(server.url + "/", headers=user_headers(email, groups), timeout=30)
        other = "Sales EMEA" if team == "Sales US" else "Sales US"
        return response.status_code, team in response.text, other in response.text

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(visit, range(200)))
    assert all(status == 200 for status, _, _ in results)
    assert all(own and not other for _, own, other in results)
    by_subtenant = sim.stats()["by_subtenant"]
    assert set(by_subtenant) == {"acme/sales-us", "acme/sales-emea"}
    assert all(count <= 2 for count in by_subtenant.values()), by_subtenant


def test_fifty_concurrent_first_requests_make_one_token_request(gunicorn, sim):
    server = gunicorn(workers=1, threads=32)
    sim.fault(delay=0.5, count=1)  # keep the first fetch in flight while the rest arrive

    def visit(n):
        with recording_session() as http:
            return http.get(server.url + "/", headers=user_headers(f"u{n}@us.acme.example"),
                            timeout=30).status_code

    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(visit, range(50)))
    assert statuses == [200] * 50
    assert sim.stats()["token_requests"] == 1


def test_untrusted_peer_headers_get_401_under_gunicorn(gunicorn, http):
    server = gunicorn(workers=1, GATEWAY_TRUSTED_PROXIES="192.0.2.0/24")
    response = http.get(server.url + "/", headers=user_headers("alice@acme.example"))
    assert response.status_code == 401
    assert "You are not signed in" in response.text


def test_underscore_header_variant_is_dropped(gunicorn, http):
    # WSGI folds "X_Forwarded_Email" and "X-Forwarded-Email" into one name; gunicorn must drop it.
    server = gunicorn(workers=1)
    response = http.get(server.url + "/", headers={"X_Forwarded_Email": "alice@acme.example"})
    assert response.status_code == 401
