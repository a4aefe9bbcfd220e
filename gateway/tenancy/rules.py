"""Tenant rules: which Zipteams subtenants a user may see. Pure Python, no Flask.

The rules file is TOML: a list of ``[[subtenant]]`` tables, each with
``tenant``, ``id``, ``name`` and any of ``emails``, ``email_domains`` and
``groups``. A user matches a table when any listed value matches. Emails and
domains compare case-insensitively; groups compare exactly. Deny by default:
no match, no dashboard. Rules are compiled into lookup tables once, at load.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from gateway.memo import Memo

logger = logging.getLogger(__name__)

# An id travels in an HTTP header and in "tenant/id" keys: visible ASCII, no '/'.
_ID = re.compile(r"[!-.0-~]{1,128}")
# Hostname labels in ASCII (IDNs must be written as xn--); no trailing dot.
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")
_ALLOWED_KEYS = {"tenant", "id", "name", "emails", "email_domains", "groups"}


class RulesError(ValueError):
    """The tenants file is invalid. The message names the file, the table and the problem."""


def normalize_domain(domain: str) -> str | None:
    """A lower-case ASCII domain, or None when it is not a well-formed hostname."""
    if not domain.isascii():
        return None  # look-alike Unicode never matches an ASCII rule
    domain = domain.lower()
    labels = domain.split(".")
    if len(labels) < 2 or len(domain) > 253 or not all(_LABEL.fullmatch(lb) for lb in labels):
        return None
    return domain


def normalize_email(email: str) -> str | None:
    """``local@domain`` lower-cased, or None when it is not one well-formed address."""
    if not isinstance(email, str) or email.count("@") != 1:
        return None
    local, _, domain = email.strip().partition("@")
    if email != email.strip() or not _LOCAL.fullmatch(local) or local.startswith(".") \
            or local.endswith(".") or ".." in local:
        return None
    domain = normalize_domain(domain)
    if domain is None:
        return None
    return f"{local.lower()}@{domain}"


@dataclass(frozen=True)
class Subtenant:
    tenant: str
    id: str
    name: str
    emails: frozenset[str] = frozenset()
    email_domains: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    key: str = field(init=False, repr=False, compare=False)  # "tenant/id", read on every request

    def __post_init__(self):
        object.__setattr__(self, "key", f"{self.tenant}/{self.id}")


@dataclass(frozen=True)
class Match:
    subtenant: Subtenant
    reason: str  # e.g. "email alice@example.com", "email_domain example.com", "group sales"

    @property
    def key(self) -> str:
        return self.subtenant.key


# Users whose matches a process remembers: as many as the cookies and identity headers remembered
# (gateway.identity); each entry is a few hundred bytes, and more users than this in a few minutes
# per worker only costs a re-match, a few dict look-ups (docs/performance.md, "Memory").
MEMO_SIZE = 4096


class Rules:
    """Compiled rules. ``match`` is a few dict look-ups, whatever the file's size.

    Rules never change once built (a reload builds new ones), so each user's
    answer is remembered: every request asks again for the same few users.
    """

    def __init__(self, subtenants: Iterable[Subtenant]):
        self._memo = Memo(MEMO_SIZE, admit_on_repeat=True)  # a one-time visitor pushes no one out
        self.subtenants: tuple[Subtenant, ...] = tuple(subtenants)
        self._order = {s.key: i for i, s in enumerate(self.subtenants)}
        self._by_key = {s.key: s for s in self.subtenants}
        self._by_email: dict[str, list[Subtenant]] = {}
        self._by_domain: dict[str, list[Subtenant]] = {}
        self._by_group: dict[str, list[Subtenant]] = {}
        for s in self.subtenants:
            for table, values in ((self._by_email, s.emails), (self._by_domain, s.email_domains),
                                  (self._by_group, s.groups)):
                for value in values:
                    table.setdefault(value, []).append(s)

    def __len__(self) -> int:
        return len(self.subtenants)

    def get(self, key: str) -> Subtenant | None:
        return self._by_key.get(key)

    def match(self, email: str | None, groups: Iterable[str] = ()) -> list[Match]:
        """Every subtenant the user matches, in file order, each with the first reason."""
        groups = tuple(groups)
        return list(self._memo.get_or_make((email, groups), lambda: tuple(self._match(email, groups))))

    def _match(self, email: str | None, groups: tuple[str, ...]) -> list[Match]:
        found: dict[str, Match] = {}
        address = normalize_email(email) if email else None
        if address is not None:
            for s in self._by_email.get(address, ()):
                found.setdefault(s.key, Match(s, f"email {address}"))
            domain = address.rpartition("@")[2]
            for s in self._by_domain.get(domain, ()):
                found.setdefault(s.key, Match(s, f"email_domain {domain}"))
        for group in groups:
            for s in self._by_group.get(group, ()):
                found.setdefault(s.key, Match(s, f"group {group}"))
        return sorted(found.values(), key=lambda m: self._order[m.key])

    def named_groups(self, groups: Iterable[str]) -> tuple[str, ...]:
        """The ones among ``groups`` that some rule names: all a session needs to keep."""
        return tuple(g for g in groups if g in self._by_group)

    def users(self) -> list[str]:
        """Every email named in the rules (the demo login lists them)."""
        return sorted(self._by_email)


def parse_rules(data: dict[str, Any], source: str = "tenants file") -> Rules:
    """Validate parsed TOML and compile it. Raises RulesError naming the table at fault."""
    extra = set(data) - {"subtenant"}
    if extra:
        raise RulesError(f"{source}: unknown top-level key(s) {', '.join(sorted(extra))}; "
                         "expected only [[subtenant]] tables")
    tables = data.get("subtenant")
    if not isinstance(tables, list) or not tables:
        raise RulesError(f"{source}: no [[subtenant]] tables; every user would be refused")
    seen: set[str] = set()
    subtenants = []
    for number, table in enumerate(tables, start=1):
        where = f"{source}: [[subtenant]] #{number}"
        if not isinstance(table, dict):
            raise RulesError(f"{where}: must be a table")
        if isinstance(table.get("tenant"), str) and isinstance(table.get("id"), str):
            where += f" ({table['tenant']}/{table['id']})"
        subtenant = _parse_table(table, where)
        if subtenant.key in seen:
            raise RulesError(f"{where}: duplicate of an earlier table with the same tenant and id")
        seen.add(subtenant.key)
        subtenants.append(subtenant)
    return Rules(subtenants)


def _parse_table(table: dict[str, Any], where: str) -> Subtenant:
    unknown = set(table) - _ALLOWED_KEYS
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                         f"allowed: {', '.join(sorted(_ALLOWED_KEYS))}")
    fields: dict[str, str] = {}
    for name in ("tenant", "id", "name"):
        value = table.get(name)
        if not isinstance(value, str) or not value.strip():
            raise RulesError(f"{where}: '{name}' is required and must be a non-empty string")
        if name != "name" and not _ID.fullmatch(value):
            raise RulesError(f"{where}: '{name}' must be 1-128 visible ASCII characters without '/'")
        fields[name] = value.strip() if name == "name" else value
    emails = _strings(table, "emails", where, normalize_email, "a well-formed email address")
    domains = _strings(table, "email_domains", where, normalize_domain,
                       "a domain such as example.com (ASCII or xn--, no '@', no trailing dot)")
    groups = _strings(table, "groups", where, lambda g: g if g.strip() == g and g else None,
                      "a non-empty group name without surrounding spaces")
    if not (emails or domains or groups):
        raise RulesError(f"{where}: has no emails, email_domains or groups, so nobody can match it")
    return Subtenant(fields["tenant"], fields["id"], fields["name"], emails, domains, groups)


def _strings(table: dict[str, Any], name: str, where: str, normalize, what: str) -> frozenset[str]:
    values = table.get(name, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise RulesError(f"{where}: '{name}' must be a list of strings")
    out = set()
    for value in values:
        normal = normalize(value)
        if normal is None:
            raise RulesError(f"{where}: '{name}' entry {value!r} is not {what}")
        out.add(normal)
    return frozenset(out)


def load_rules(path: str | Path) -> Rules:
    """Read and compile a tenants file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read the tenants file ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{path}: not valid TOML ({exc})") from None
    return parse_rules(data, str(path))


class RulesFile:
    """The tenants file, reloaded without a restart when it changes.

    The file's identity (mtime, size, inode) is checked at most once every
    ``interval`` seconds, by one thread while the others go on with the rules in
    force. A valid new file takes effect at once; an invalid one is refused with
    a log line naming the problem, and the old rules stay in force.
    """

    def __init__(self, path: str | Path, interval: float, *, monotonic: Callable[[], float] = time.monotonic,
                 on_reload: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.interval = interval
        self._monotonic = monotonic
        self._on_reload = on_reload or (lambda result: None)
        self._lock = threading.Lock()
        self._signature = self._stat()
        self.rules = load_rules(self.path)
        self._next_check = monotonic() + interval

    def _stat(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> Rules:
        """The rules in force, after a cheap change check when one is due."""
        if self.interval and self._monotonic() >= self._next_check and self._lock.acquire(blocking=False):
            try:
                self._next_check = self._monotonic() + self.interval
                self._check()
            finally:
                self._lock.release()
        return self.rules

    def _check(self) -> None:
        signature = self._stat()
        if signature == self._signature:
            return
        self._signature = signature
        if signature is None:
            logger.error("tenants file %s has disappeared; keeping the %d rules in force",
                         self.path, len(self.rules))
            self._on_reload("refused")
            return
        try:
            rules = load_rules(self.path)
        except RulesError as exc:
            logger.error("tenants file change refused, keeping the %d rules in force: %s",
                         len(self.rules), exc)
            self._on_reload("refused")
            return
        self.rules = rules
        logger.warning("tenants file reloaded: %d subtenant rules in force", len(rules))
        self._on_reload("loaded")
