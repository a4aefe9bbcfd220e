"""Audit events on the request line: one line per request, every field an auditor had before.

Each event raised while serving a request is on that request's line: in JSON an ``events``
list, in text ``event=<name>`` and its ``key=value`` pairs. An event raised outside a request
has its own line. The lines are taken from the gateway's own formatters, as written to stdout.
"""
import json
import logging
import re
import threading

import pytest

from conftest import user_headers
from gateway.ops import audit
from gateway.ops.logformat import JsonFormatter, RequestLine, TextFormatter, event_text
from gateway.ops.requestid import RequestIdFilter
from test_auth import csrf_from

ALICE = user_headers("alice@acme.example")
SAME_SITE = {"Sec-Fetch-Site": "same-origin"}
FINGERPRINT = re.compile(r"[0-9a-f]{12}")


class Lines(logging.Handler):
    """What the gateway's stdout handler writes, in both formats, beside the leak oracle's recorder."""

    def __init__(self):
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.json, self.text, self.records = [], [], []
        self.formats = JsonFormatter(), TextFormatter()

    def emit(self, record):
        self.records.append(record)
        self.json.append(self.formats[0].format(record))
        self.text.append(self.formats[1].format(record))

    def of(self, response) -> tuple[list[dict], list[str]]:
        """The JSON and text lines that carry ``response``'s request id."""
        rid = response.headers["X-Request-Id"]
        return ([entry for entry in map(json.loads, self.json) if entry["request_id"] == rid],
                [line for line in self.text if f"[{rid}]" in line])


@pytest.fixture
def lines():
    handler = Lines()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


TOKEN = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_text(message: str) -> tuple[dict, list[dict]]:
    """A text request line's message as a reader parses it: the request's own ``key=value``
    pairs, then one event per ``event=``, values JSON-decoded when quoted."""
    head, events = {}, []
    for key, value in TOKEN.findall(message):
        value = json.loads(value) if value.startswith('"') else value
        if key == "event":
            events.append({})
        (events[-1] if events else head)[key] = value
    return head, events


def as_text(event: dict) -> dict:
    return {key: value if isinstance(value, str) else str(value) for key, value in event.items()}


def one_request_line(lines, response) -> tuple[dict, str]:
    """The request's only gateway line with events: JSON entry and text line. No event of it has a line of its own."""
    entries, texts = lines.of(response)
    assert not [e for e in entries if e["logger"] == "gateway.audit"], entries
    [entry] = [e for e in entries if e["message"].startswith("request ")]
    [text] = [t for t in texts if " request method=" in t]
    # The text line says what the JSON line says, field for field.
    head, events = parse_text(text.split("] ", 1)[1])
    assert events == [as_text(e) for e in entry["events"]]
    assert entry["message"] == " ".join(["request", *(f"{k}={v}" for k, v in head.items())])
    return entry, text


def events_named(entry: dict, name: str) -> list[dict]:
    return [e for e in entry["events"] if e["event"] == name]


def test_a_first_page_view_is_one_line_with_the_sign_in_token_and_view(client, lines):
    response = client.get("/", headers=ALICE)
    assert response.status_code == 200
    entry, text = one_request_line(lines, response)
    assert entry["logger"] == "gateway.ops.logs" and "endpoint=embed.index status=200" in entry["message"]
    [login] = events_named(entry, "login")
    assert login == {"event": "login", "email": "alice@acme.example", "mode": "header", "groups": 0}
    [fetched] = events_named(entry, "token_fetched")
    assert FINGERPRINT.fullmatch(fetched.pop("fingerprint")) and isinstance(fetched.pop("serve_until"), int)
    assert fetched == {"event": "token_fetched", "tenant": "acme", "subtenant": "sales-emea"}
    [viewed] = events_named(entry, "embed_viewed")
    assert viewed == {"event": "embed_viewed", "email": "alice@acme.example", "tenant": "acme",
                      "subtenant": "sales-emea", "rule": "email alice@acme.example", "mode": "proxy"}
    # Text: the events in the order raised, each from its "event=" on.
    assert text.index(" event=login email=alice@acme.example mode=header groups=0") < text.index(" event=token_fetched")
    assert text.endswith(' event=embed_viewed email=alice@acme.example tenant=acme subtenant=sales-emea '
                         'rule="email alice@acme.example" mode=proxy')


def test_a_returning_page_view_carries_its_view(client, lines):
    client.get("/", headers=ALICE)
    response = client.get("/", headers=ALICE)
    entry, text = one_request_line(lines, response)
    assert [e["event"] for e in entry["events"]] == ["embed_viewed"]
    assert ' event=embed_viewed email=alice@acme.example tenant=acme subtenant=sales-emea rule=' in text


def choose(client, subtenant: str):
    """Bob (in the emea group) picks ``subtenant`` on the team picker, as a browser would."""
    headers = user_headers("bob@acme.example", "emea")
    picker = client.get("/select", headers=headers)
    return client.post("/select", data={"subtenant": subtenant, "csrf_token": csrf_from(picker)}, headers=headers)


def test_a_team_switch_is_on_the_line_of_the_choice(client, lines):
    response = choose(client, "acme/sales-emea")
    assert response.status_code == 303
    entry, text = one_request_line(lines, response)
    assert entry["events"] == [{"event": "subtenant_resolved", "email": "bob@acme.example",
                                "subtenant": "acme/sales-emea", "rule": "group emea", "how": "selected"}]
    assert text.endswith(' event=subtenant_resolved email=bob@acme.example subtenant=acme/sales-emea '
                         'rule="group emea" how=selected')


def test_a_refused_proxied_write_keeps_its_event_on_the_failed_request_line(make_app, lines):
    pc = make_app(GATEWAY_EMBED_MODE="proxy").test_client()
    response = pc.post("/dashboard/api/echo", data=b"x", headers={**ALICE, "Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403
    entry, text = one_request_line(lines, response)
    assert "status=403" in entry["message"]
    [refused] = events_named(entry, "proxy_refused")
    assert refused == {"event": "proxy_refused", "email": "alice@acme.example", "method": "POST",
                       "reason": refused["reason"]} and refused["reason"]
    assert f" event=proxy_refused email=alice@acme.example method=POST reason={json.dumps(refused['reason'])}" in text


def test_a_sign_out_is_on_its_request_line(client, lines):
    page = client.get("/", headers=ALICE)
    response = client.post("/logout", data={"csrf_token": csrf_from(page)}, headers={**ALICE, **SAME_SITE})
    entry, text = one_request_line(lines, response)
    assert events_named(entry, "logout") == [{"event": "logout", "email": "alice@acme.example"}]
    assert " event=logout email=alice@acme.example" in text


def test_a_hand_off_sign_in_and_its_refused_replay_are_on_their_request_lines(make_app, lines, tmp_path):
    from test_handoff import AUD, ISS, SECRET, claims, hs

    app = make_app(GATEWAY_AUTH_MODE="jwt", GATEWAY_HANDOFF_SECRET=SECRET, GATEWAY_HANDOFF_ISSUER=ISS,
                   GATEWAY_HANDOFF_AUDIENCE=AUD, GATEWAY_STATE_DIR=str(tmp_path / "state"))
    token = hs(claims(groups=["us", "emea"]))
    signed_in = app.test_client().get("/sso/jwt", query_string={"jwt": token})
    assert signed_in.status_code == 302
    entry, text = one_request_line(lines, signed_in)
    assert entry["events"] == [{"event": "login", "email": "alice@acme.example", "mode": "jwt", "groups": 2}]
    assert text.endswith(" event=login email=alice@acme.example mode=jwt groups=2")
    replay = app.test_client().get("/sso/jwt", query_string={"jwt": token})
    assert replay.status_code == 401
    entry, text = one_request_line(lines, replay)
    assert entry["events"] == [{"event": "login_refused", "mode": "jwt", "reason": "jti replayed"}]
    assert text.endswith(' event=login_refused mode=jwt reason="jti replayed"')


def test_a_team_not_matched_is_refused_on_its_request_line(client, lines):
    response = choose(client, "globex/ops")
    assert response.status_code == 403
    entry, _ = one_request_line(lines, response)
    assert entry["events"] == [{"event": "subtenant_denied", "email": "bob@acme.example",
                                "reason": "selected a subtenant not matched"}]


def test_a_groups_overage_is_on_the_sign_ins_request_line(make_app, lines):
    from gateway.identity.oidc import user_from_claims

    app = make_app()
    claims = {"iss": "https://idp.example", "sub": "x", "email": "erin@acme.example", "email_verified": True,
              "_claim_names": {"groups": "src1"}, "_claim_sources": {"src1": {"endpoint": "https://graph"}}}
    app.get("/overage")(lambda: user_from_claims(claims).email)
    response = app.test_client().get("/overage", headers=ALICE)
    entry, _ = one_request_line(lines, response)
    assert events_named(entry, "groups_overage") == [{"event": "groups_overage", "email": "erin@acme.example",
                                                      "claim": "groups"}]


def test_a_request_that_fails_with_an_exception_still_carries_its_events(make_app, lines):
    app = make_app()

    @app.get("/explode")
    def explode():
        audit.event("login_refused", mode="jwt", reason="before the failure")
        raise RuntimeError("boom")

    client = app.test_client()
    client.get("/", headers=ALICE)  # signed in: the failing request raises only its own event
    response = client.get("/explode", headers=ALICE)
    assert response.status_code == 500
    entry, _ = one_request_line(lines, response)
    assert "status=500" in entry["message"]
    assert entry["events"] == [{"event": "login_refused", "mode": "jwt", "reason": "before the failure"}]


def test_a_request_without_its_line_writes_its_events_on_lines_of_their_own(make_app, lines):
    """A request context that never reached the after-request hook: its events are not lost."""
    with make_app().test_request_context("/"):
        audit.collect()
        audit.event("logout", email="a@x.example")
        assert not lines.records  # waiting for the request line
    [entry] = [json.loads(line) for line in lines.json]
    assert entry["logger"] == "gateway.audit" and entry["event"] == "logout" and entry["email"] == "a@x.example"


@pytest.mark.parametrize("where", ["no context", "a thread"])
def test_an_event_outside_a_request_keeps_a_line_of_its_own(make_app, lines, where):
    def raise_it():
        audit.event("token_refreshed", tenant="acme", subtenant="sales-us", fingerprint="0123456789ab",
                    serve_until=1700000000)

    if where == "a thread":
        with make_app().test_request_context("/"):  # a request's thread is busy; the refresh is not its
            audit.collect()
            thread = threading.Thread(target=raise_it)
            thread.start()
            thread.join()
    else:
        raise_it()
    [line] = [line for line in lines.json if json.loads(line)["logger"] == "gateway.audit"]
    [text] = [text for text in lines.text if " gateway.audit " in text]
    entry = json.loads(line)
    assert entry["logger"] == "gateway.audit" and entry["request_id"] == "-" and "events" not in entry
    assert {k: entry[k] for k in ("event", "tenant", "subtenant", "fingerprint", "serve_until")} == {
        "event": "token_refreshed", "tenant": "acme", "subtenant": "sales-us", "fingerprint": "0123456789ab",
        "serve_until": 1700000000}
    assert entry["message"] == "event=token_refreshed tenant=acme subtenant=sales-us fingerprint=0123456789ab " \
                               "serve_until=1700000000"
    assert text.endswith(" INFO gateway.audit [-] " + entry["message"])


# --------------------------------------------------- the gateway.audit logger
@pytest.fixture
def audit_handler():
    kept = Lines()
    logging.getLogger("gateway.audit").addHandler(kept)
    yield kept
    logging.getLogger("gateway.audit").removeHandler(kept)


def test_a_handler_on_gateway_audit_gets_each_request_line_with_events_once(client, lines, audit_handler):
    response = client.get("/", headers=ALICE)
    [entry] = audit_handler.of(response)[0]  # the page's one line; not the lines without events
    assert [e["event"] for e in entry["events"]] == ["login", "token_fetched", "embed_viewed"]
    [written] = [e for e in lines.of(response)[0] if e.get("events")]  # the root handler: once
    assert written == entry


def test_a_handler_on_both_loggers_writes_a_request_line_once(client, lines):
    logging.getLogger("gateway.audit").addHandler(lines)  # already on the root logger
    try:
        response = client.get("/", headers=ALICE)
    finally:
        logging.getLogger("gateway.audit").removeHandler(lines)
    assert len([e for e in lines.of(response)[0] if e.get("events")]) == 1


def test_a_partner_routing_audit_elsewhere_still_gets_the_events(client, lines, audit_handler):
    """``propagate = False`` on gateway.audit: its handler has the lines, the root handler the access line."""
    logging.getLogger("gateway.audit").propagate = False
    try:
        response = client.get("/", headers=ALICE)
    finally:
        logging.getLogger("gateway.audit").propagate = True
    [entry] = audit_handler.of(response)[0]
    assert [e["event"] for e in entry["events"]] == ["login", "token_fetched", "embed_viewed"]
    assert [e for e in lines.of(response)[0] if e.get("events")] == [entry]


def test_turning_gateway_audit_off_keeps_events_off_every_line(client, lines):
    logging.getLogger("gateway.audit").setLevel(logging.WARNING)
    try:
        response = client.get("/", headers=ALICE)
    finally:
        logging.getLogger("gateway.audit").setLevel(logging.NOTSET)
    entries, _ = lines.of(response)
    assert entries and not any("events" in e or "event" in e for e in entries)


# --------------------------------------------------------- the text form
ODD = ["plain", "", "two words", 'quote " and \\', "k=v event=forged", "newline\nFORGED", "é 名前", "\u2028"]


@pytest.mark.parametrize("value", ODD)
def test_a_value_cannot_add_a_field_or_an_event_to_a_text_line(value):
    events = [{"event": "login", "email": value, "groups": 2}, {"event": "embed_viewed", "rule": value}]
    record = logging.LogRecord("gateway.ops.logs", logging.INFO, "", 0,
                               RequestLine("request method=%s status=%s", ("GET", 200), events), (), None)
    record.request_id = "rid-0123456789"
    line = TextFormatter().format(record)
    assert len(line.splitlines()) == 1
    head, parsed = parse_text(line.split("] ", 1)[1])
    assert head == {"method": "GET", "status": "200"}
    assert parsed == [{"event": "login", "email": value, "groups": "2"}, {"event": "embed_viewed", "rule": value}]


def test_values_are_bare_only_when_they_need_no_quotes():
    assert event_text({"event": "e", "a": "x_1@y.example:/+-", "b": 3, "c": None, "d": "a b", "e": "", "f": "é"}) == \
        'event=e a=x_1@y.example:/+- b=3 c=None d="a b" e="" f="é"'


def test_a_json_request_line_is_what_json_dumps_makes_of_it():
    events = [{"event": "login", "email": "a\u2028b\"c", "groups": 2, "flag": True, "none": None}]
    record = logging.LogRecord("gateway.ops.logs", logging.INFO, "", 0,
                               RequestLine("request method=%s ms=%.1f", ("GET", 1.25), events), (), None)
    record.request_id = "rid-0123456789"
    line = JsonFormatter().format(record)
    assert json.loads(line) == {"ts": json.loads(line)["ts"], "level": "info", "logger": "gateway.ops.logs",
                                "request_id": "rid-0123456789", "message": "request method=GET ms=1.2",
                                "events": events}
    assert "\u2028" not in line and len(line.splitlines()) == 1


# ------------------------------------------------- the benchmarks' floor check
def test_the_floor_check_sets_a_request_lines_events_aside_but_not_an_event_line(client, lines, tmp_path):
    """bench/run.py's floor (a bare app plus one access line) must write what the gateway writes."""
    from bench.run import lines_of

    response = client.get("/", headers=ALICE)
    rid = response.headers["X-Request-Id"]
    gateway = [line for line in lines.json if rid in line]
    floor = [json.dumps({k: v for k, v in entry.items() if k != "events"})
             for entry in map(json.loads, gateway) if entry["logger"] == "gateway.ops.logs"]

    def kinds(name: str, written: list[str]) -> list[str]:
        (tmp_path / name).write_text("\n".join(written) + "\n")
        return lines_of(tmp_path / name, rid)

    assert kinds("gateway.log", gateway) == kinds("floor.log", floor) != []
    # A gateway that wrote an event on a line of its own again would not match its floor.
    alone = logging.LogRecord("gateway.audit", logging.INFO, "", 0, "event=login", None, None)
    alone.request_id, alone.audit = rid, {"event": "login", "email": "alice@acme.example"}
    assert kinds("gateway.log", [*gateway, JsonFormatter().format(alone)]) != kinds("floor.log", floor)
