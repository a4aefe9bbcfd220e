"""Tenant rules: parsing, validation messages and matching."""
import pytest

from conftest import DATA, ROOT
from gateway.tenancy.rules import RulesError, load_rules, normalize_email, parse_rules


def table(**fields):
    base = {"tenant": "t1", "id": "s1", "name": "Team 1", "emails": ["a@x.example"]}
    base.update(fields)
    return {"subtenant": [base]}


@pytest.fixture
def rules():
    return load_rules(DATA / "tenants.toml")


def test_example_file_is_valid():
    assert len(load_rules(ROOT / "tenants.example.toml")) == 3


def test_email_matches_case_insensitively(rules):
    [match] = rules.match("Alice@ACME.example")
    assert match.key == "acme/sales-emea"
    assert match.reason == "email alice@acme.example"


def test_domain_matches_whole_domain(rules):
    [match] = rules.match("zed@globex.example")
    assert match.key == "globex/ops" and match.reason == "email_domain globex.example"


def test_group_matches_exactly(rules):
    assert [m.key for m in rules.match("nobody@else.example", ["us"])] == ["acme/sales-us"]
    assert rules.match("nobody@else.example", ["US"]) == []


def test_several_matches_come_in_file_order(rules):
    keys = [m.key for m in rules.match("bob@acme.example", ["emea"])]
    assert keys == ["acme/sales-emea", "acme/sales-us"]


def test_unmatched_user_gets_nothing(rules):
    assert rules.match("mallory@evil.example", ["admins"]) == []
    assert rules.match(None) == []


@pytest.mark.parametrize("email", [
    "zed@globex.example.evil.example",   # suffix trick
    "zed@evil.example@globex.example",   # second @
    "zed@globex.example.",               # trailing dot
    "zed@sub.globex.example",            # sub-domains are not the domain
    "zed@glоbex.example",                # Cyrillic "о"
    "zed@globex.example ",               # trailing space
    "zed@globex..example",
    "@globex.example",
    "zed@",
    "",
])
def test_domain_tricks_never_match(rules, email):
    assert rules.match(email) == []


def test_normalize_email():
    assert normalize_email("A.B+c@Example.COM") == "a.b+c@example.com"
    assert normalize_email("a@@b.example") is None
    assert normalize_email("a..b@example.com") is None


@pytest.mark.parametrize("data, message", [
    ({}, "no [[subtenant]] tables"),
    ({"subtenant": [], "other": 1}, "unknown top-level key(s) other"),
    (table(tenant=""), "'tenant' is required and must be a non-empty string"),
    (table(id="a/b"), "#1 (t1/a/b): 'id' must be 1-128 visible ASCII"),
    (table(name=3), "'name' is required"),
    (table(email=["a@x.example"]), "unknown key(s) email"),
    (table(emails="a@x.example"), "'emails' must be a list of strings"),
    (table(emails=["not-an-email"]), "'emails' entry 'not-an-email' is not a well-formed email"),
    (table(emails=[], email_domains=["@x.example"]), "'email_domains' entry '@x.example'"),
    (table(emails=[], email_domains=["x.example."]), "'email_domains' entry 'x.example.'"),
    (table(emails=[]), "nobody can match it"),
    (table(groups=[" padded"]), "'groups' entry ' padded'"),
])
def test_invalid_rules_name_the_table_and_problem(data, message):
    with pytest.raises(RulesError) as info:
        parse_rules(data, "tenants.toml")
    assert message in str(info.value)
    assert str(info.value).startswith("tenants.toml")


def test_duplicate_subtenant_is_refused():
    data = table()
    data["subtenant"].append(dict(data["subtenant"][0]))
    with pytest.raises(RulesError, match=r"#2 \(t1/s1\): duplicate"):
        parse_rules(data, "f")


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "t.toml"
    bad.write_text("[[subtenant]\n")
    with pytest.raises(RulesError, match="not valid TOML"):
        load_rules(bad)
    with pytest.raises(RulesError, match="cannot read the tenants file"):
        load_rules(tmp_path / "missing.toml")


def test_demo_users_are_the_listed_emails(rules):
    assert rules.users() == ["alice@acme.example", "bob@acme.example"]


def test_answers_are_remembered_per_user_but_never_shared_or_unbounded(rules, monkeypatch):
    import gateway.tenancy.rules as tenants

    first = rules.match("bob@acme.example", ["emea"])
    first.clear()  # a caller changing its list changes nothing for the next one
    again = rules.match("bob@acme.example", ("emea",))
    assert [m.key for m in again] == ["acme/sales-emea", "acme/sales-us"]
    assert [m.key for m in rules.match("bob@acme.example")] == ["acme/sales-us"]  # the groups are in the key
    monkeypatch.setattr(tenants, "MEMO_SIZE", 3)
    small = load_rules(DATA / "tenants.toml")
    for n in range(10):
        small.match(f"user{n}@acme.example")
    assert len(small._memo) <= 3


def test_a_reload_answers_from_the_new_rules_not_the_old_answers(tmp_path):
    from gateway.tenancy.rules import load_rules as load

    path = tmp_path / "t.toml"
    path.write_text('[[subtenant]]\ntenant = "t1"\nid = "s1"\nname = "One"\nemails = ["a@x.example"]\n')
    old = load(path)
    assert [m.key for m in old.match("a@x.example")] == ["t1/s1"]
    path.write_text('[[subtenant]]\ntenant = "t1"\nid = "s2"\nname = "Two"\nemails = ["a@x.example"]\n')
    assert [m.key for m in load(path).match("a@x.example")] == ["t1/s2"]
