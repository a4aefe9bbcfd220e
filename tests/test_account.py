"""Who is signed in, and "Sign out", on every page where someone is: the team picker, the
loading page and every error page, not only the embed page. Only the email is shown, escaped.
(In Chromium, with axe: test_experience.py and test_accessibility.py.)
"""
import re

import pytest

from conftest import user_headers

ALICE = user_headers("alice@acme.example")
BOB = user_headers("bob@acme.example", "emea,top-secret-group")  # two teams: the picker
MALLORY = user_headers("mallory@evil.example")  # signed in, linked to no team
ACCOUNT = re.compile(r'<div class="account">(.*?)</div>', re.S)


def account(response) -> str | None:
    """The header's account block of a page, or None when it has none."""
    found = ACCOUNT.findall(response.get_data(as_text=True))
    assert len(found) <= 1
    return found[0] if found else None


def signs_out(client, block: str, headers: dict) -> None:
    """The block's form really signs this user out (its CSRF token is the session's)."""
    assert 'action="/logout"' in block and re.search(r"<button type=\"submit\">Sign out</button>", block)
    token = re.search(r'name="csrf_token" value="([^"]+)"', block).group(1)
    response = client.post("/logout", data={"csrf_token": token}, headers=headers)
    assert response.status_code == 303 and response.headers["Location"].startswith("/signed-out")


def test_the_team_picker_shows_who_is_signed_in_and_signs_out(client):
    page = client.get("/select", headers=BOB)
    assert page.status_code == 200 and "Choose a team" in page.get_data(as_text=True)
    block = account(page)
    assert block is not None and "bob@acme.example" in block and "Signed in as" in block
    assert "top-secret-group" not in page.get_data(as_text=True)  # the email only: never groups or claims
    signs_out(client, block, BOB)


def test_the_loading_page_shows_who_is_signed_in(client, sim, monkeypatch):
    from gateway.delivery import loading

    monkeypatch.setattr(loading, "LOADING_PAGE_AFTER", 0.0)  # the loading page at once
    sim.fault(delay=0.5, count=1)
    page = client.get("/", headers={**ALICE, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"})
    assert 'data-page="loading"' in page.get_data(as_text=True)
    assert "alice@acme.example" in account(page)


def test_the_loading_page_without_chrome_leaves_it_to_the_partner(client, sim, monkeypatch):
    from gateway.delivery import loading

    monkeypatch.setattr(loading, "LOADING_PAGE_AFTER", 0.0)
    sim.fault(delay=0.5, count=1)
    page = client.get("/?chrome=none", headers={**ALICE, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"})
    assert '<header class="bar" hidden>' in page.get_data(as_text=True)


@pytest.mark.parametrize("case", ["404", "403", "502", "503"])
def test_error_pages_show_a_signed_in_user_and_sign_out(make_app, sim, case):
    client = make_app(ZIPTEAMS_RETRIES="0").test_client()
    headers, path, status = ALICE, "/", int(case)
    if case == "404":
        path = "/no-such-page"
    elif case == "403":
        headers = MALLORY
    elif case == "502":
        sim.fault(status=500, count=1)
    else:
        sim.fault(status=429, message="Rate limit exceeded. Try again in 30 seconds.", count=1)
    page = client.get(path, headers=headers)
    assert page.status_code == status and 'data-page="error"' in page.get_data(as_text=True)
    block = account(page)
    assert block is not None
    email = headers["X-Forwarded-Email"]
    assert f'title="{email}"' in block and f"</span>{email}</span>" in block
    signs_out(client, block, headers)


def test_the_email_is_escaped(client):
    email = "o'neil&co@globex.example"
    page = client.get("/no-such-page", headers=user_headers(email))
    block = account(page)
    assert "o&#39;neil&amp;co@globex.example" in block and email not in block


@pytest.mark.parametrize("path, headers", [("/", {}), ("/signed-out", {}), ("/signed-out", ALICE)],
                         ids=["not-signed-in", "signed-out", "signed-out-behind-a-proxy"])
def test_no_account_where_nobody_is_signed_in(client, path, headers):
    page = client.get(path, headers=headers)
    assert 'data-page="' in page.get_data(as_text=True)
    assert account(page) is None


def test_answers_for_scripts_carry_no_account(client):
    # A dashboard call before bob chose a team: an error for the dashboard's script, not a page.
    response = client.get("/dashboard/api/summary", headers=BOB)
    assert response.status_code == 409 and 'data-page="error"' in response.get_data(as_text=True)
    assert account(response) is None
    assert "Set-Cookie" not in response.headers or "csrf" not in response.headers["Set-Cookie"]
    as_json = client.get("/no-such-page", headers={**ALICE, "Accept": "application/json"})
    assert set(as_json.get_json()) == {"error"} and "alice" not in as_json.get_data(as_text=True)
