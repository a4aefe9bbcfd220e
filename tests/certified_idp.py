"""A real, OpenID Certified provider for interoperability tests: panva's ``oidc-provider`` (Node).

``tests/oidc/provider.mjs`` runs it on loopback; this module starts it, drives its sign-in
page (with plain ``requests`` or with Chromium) and talks to its test controls.

Use it from a test module by importing the fixtures (pytest finds imported fixtures)::

    from certified_idp import certified_idp, client_metadata, sign_in_with_requests  # noqa: F401

    def test_something(certified_idp):
        idp = certified_idp(clients=[client_metadata("gateway", secret="s3cret-value")],
                            accounts={"alice": {"email": "alice@acme.example", "email_verified": True,
                                                "groups": ["sales"]}})
        idp.issuer            # "http://127.0.0.1:PORT", the OIDC_ISSUER to give the gateway
        idp.rotate()          # new signing keys (the old ones stay published); returns the new kids
        idp.set_clock(300)    # the provider's clock runs 300 s ahead from now on
        idp.put_account("bob", {...claims})

``certified_idp`` starts one provider per call and stops them all after the test;
``certified_idp_module`` is the same factory, module-scoped (start it once, share it). Both skip
(a failure under CI=true, see conftest.py) when ``node`` or ``tests/node_modules/oidc-provider``
is missing: ``npm ci --prefix tests`` installs the latter.

What the provider does, by default (see the top of provider.mjs for every option):
- scope ``email`` gives email/email_verified, ``profile`` name/preferred_username/upn...,
  ``groups`` gives groups; with an access token issued (the code flow), these claims are NOT in
  the ID token, only at the userinfo endpoint (``conformIdTokenClaims``, the spec's behaviour);
  ``groups_in_id_token=True`` puts groups in every ID token, ``conform_id_token_claims=False``
  all the granted scope claims;
- PKCE S256 required, ``nonce`` echoed, ``iss`` in every authorization response (errors too);
- RP-initiated logout at the ``end_session_endpoint``, with ``post_logout_redirect_uri`` accepted
  when ``client_id`` or ``id_token_hint`` says which client it is registered for.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import pytest
import requests

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PROVIDER_SCRIPT = TESTS / "oidc" / "provider.mjs"
OIDC_PROVIDER_PACKAGE = TESTS / "node_modules" / "oidc-provider"
NODE = os.environ.get("GATEWAY_TEST_NODE") or shutil.which("node")
START_TIMEOUT = 30.0

REDIRECT_URI = "http://gateway.test/auth/callback"
POST_LOGOUT_REDIRECT_URI = "http://gateway.test/signed-out"
DEFAULT_SCOPE = "openid email profile groups"

DEFAULT_ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {"email": "alice@acme.example", "email_verified": True, "name": "Alice Example",
              "preferred_username": "alice", "upn": "alice@acme.example", "groups": ["sales", "everyone"]},
    "bob": {"email": "bob@acme.example", "email_verified": False, "name": "Bob Example",
            "preferred_username": "bob", "upn": "bob@acme.example", "groups": ["support"]},
}


def _recording_session() -> requests.Session:
    """A session whose responses the project's leak oracle sees, when running under its conftest."""
    try:
        from conftest import recording_session
    except ImportError:  # used outside this test suite
        return requests.Session()
    return recording_session()


# ---------------------------------------------------------------- configuration helpers
def client_metadata(client_id: str = "gateway", *, secret: str | None = "gateway-client-secret",
                    auth_method: str = "client_secret_basic", alg: str = "RS256",
                    redirect_uris: list[str] | None = None,
                    post_logout_redirect_uris: list[str] | None = None,
                    jwks: dict | None = None, **extra) -> dict:
    """oidc-provider client metadata for a confidential client of the authorization code flow.

    ``auth_method``: client_secret_basic, client_secret_post or private_key_jwt (then give
    ``jwks={"keys": [public JWK]}``, e.g. ``public_jwks(client_key())``, and no secret is
    registered); ``alg``: the ID token's signing alg, RS256, ES256 or PS256.
    """
    meta = {
        "client_id": client_id,
        "redirect_uris": list(redirect_uris or [REDIRECT_URI]),
        "post_logout_redirect_uris": list(post_logout_redirect_uris or [POST_LOGOUT_REDIRECT_URI]),
        "token_endpoint_auth_method": auth_method,
        "id_token_signed_response_alg": alg,
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
    }
    if auth_method == "private_key_jwt":
        if not jwks:
            raise ValueError("a private_key_jwt client needs jwks (its public key)")
        meta["jwks"] = jwks
    elif secret is not None:
        meta["client_secret"] = secret
    return {**meta, **extra}


def client_key(alg: str = "RS256"):
    """A fresh client key pair for private_key_jwt (a joserfc key, which Authlib's PrivateKeyJWT signs with)."""
    from joserfc.jwk import ECKey, RSAKey

    params = {"alg": alg, "use": "sig", "kid": f"client-{alg.lower()}-{secrets.token_hex(4)}"}
    if alg.startswith("ES"):
        return ECKey.generate_key("P-256", parameters=params)
    return RSAKey.generate_key(2048, parameters=params)


def public_jwks(*keys) -> dict:
    return {"keys": [key.as_dict(private=False) for key in keys]}


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


# ---------------------------------------------------------------- the running provider
@dataclass
class CertifiedIdP:
    """A running ``tests/oidc/provider.mjs``."""

    issuer: str
    port: int
    config: dict
    kids: dict[str, str]  # the current signing key per alg, as of start or the last rotate()
    process: subprocess.Popen
    log_path: Path
    oidc_provider_version: str = ""
    _log_file: Any = field(default=None, repr=False)
    _discovery: dict | None = field(default=None, repr=False)

    # ---- where things are
    def url(self, path: str) -> str:
        return urljoin(self.issuer + "/", path.lstrip("/"))

    def discovery(self) -> dict:
        if self._discovery is None:
            response = requests.get(self.url("/.well-known/openid-configuration"), timeout=10)
            response.raise_for_status()
            self._discovery = response.json()
        return self._discovery

    def jwks(self) -> dict:
        response = requests.get(self.discovery()["jwks_uri"], timeout=10)
        response.raise_for_status()
        return response.json()

    def client(self, client_id: str) -> dict:
        for meta in self.config["clients"]:
            if meta["client_id"] == client_id:
                return meta
        raise KeyError(client_id)

    def authorize_url(self, client_id: str = "gateway", *, code_challenge: str, state: str | None = None,
                      nonce: str | None = None, scope: str = DEFAULT_SCOPE, redirect_uri: str | None = None,
                      **extra: str) -> str:
        """An authorization request (code flow, PKCE S256), as a relying party would send."""
        params = {
            "response_type": "code", "client_id": client_id, "scope": scope,
            "redirect_uri": redirect_uri or self.client(client_id)["redirect_uris"][0],
            "state": state or secrets.token_urlsafe(16), "nonce": nonce or secrets.token_urlsafe(16),
            "code_challenge": code_challenge, "code_challenge_method": "S256", **extra,
        }
        return self.discovery()["authorization_endpoint"] + "?" + urlencode(params)

    def end_session_url(self, *, client_id: str | None = "gateway", post_logout_redirect_uri: str | None = None,
                        id_token_hint: str | None = None, state: str | None = None) -> str:
        params = {"client_id": client_id, "post_logout_redirect_uri": post_logout_redirect_uri,
                  "id_token_hint": id_token_hint, "state": state}
        return self.discovery()["end_session_endpoint"] + "?" + urlencode(
            {k: v for k, v in params.items() if v is not None})

    # ---- test controls
    def _control(self, method: str, path: str, body: dict | None = None) -> dict:
        response = requests.request(method, self.url(path), json=body if body is not None else {}, timeout=30)
        response.raise_for_status()
        return response.json()

    def rotate(self, retain: int = 1) -> dict[str, str]:
        """New RS256/PS256/ES256 signing keys become current; returns their kids by alg.

        The previous ``retain`` generations stay in the JWKS (``retain=0``: old keys gone at
        once, so tokens they signed no longer verify). No restart: sessions and codes survive.
        """
        self.kids = self._control("POST", "/_test/rotate", {"retain": retain})["kids"]
        return self.kids

    def set_clock(self, offset_seconds: float) -> None:
        """Shift the provider's clock by ``offset_seconds`` from real time (iat/exp of what it issues)."""
        self._control("POST", "/_test/clock", {"offset": offset_seconds})

    def put_account(self, account_id: str, claims: dict) -> None:
        """Add or replace an account (its claims, without ``sub``: the account id is the sub)."""
        self._control("PUT", f"/_test/accounts/{account_id}", claims)

    def state(self) -> dict:
        return self._control("GET", "/_test/state")

    # ---- lifecycle
    def log(self) -> str:
        """What the provider wrote to stderr (oidc-provider notices and errors)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stdout:
            self.process.stdout.close()
        if self._log_file:
            self._log_file.close()
            self._log_file = None


def require_certified_idp() -> None:
    """Skip (a failure under CI=true) when the provider cannot run here."""
    if not NODE:
        pytest.skip("node not installed: the certified IdP (oidc-provider) needs Node.js >= 20")
    if not (OIDC_PROVIDER_PACKAGE / "package.json").exists():
        _install_once()
    if not (OIDC_PROVIDER_PACKAGE / "package.json").exists():
        pytest.skip("tests/node_modules/oidc-provider missing: run `npm ci --prefix tests`")


_install_tried = []


def _install_once() -> None:
    """The README's one test command installs the provider too, where npm is there (once a run)."""
    npm = shutil.which("npm")
    if _install_tried or not npm:
        return
    _install_tried.append(True)
    subprocess.run([npm, "ci", "--prefix", str(TESTS), "--no-audit", "--no-fund", "--loglevel=error"],
                   cwd=ROOT, capture_output=True, timeout=300, check=False)


def start_certified_idp(workdir: Path, *, clients: list[dict] | None = None,
                        accounts: dict[str, dict] | None = None, clock_offset: float = 0,
                        groups_in_id_token: bool = False, conform_id_token_claims: bool = True,
                        pkce_required: bool = True, claims: dict | None = None, ttl: dict | None = None,
                        features: dict | None = None, client_auth_methods: list[str] | None = None,
                        port: int = 0) -> CertifiedIdP:
    """Start ``node tests/oidc/provider.mjs`` with this configuration and wait until it listens."""
    require_certified_idp()
    config: dict[str, Any] = {
        "host": "127.0.0.1", "port": port,
        "clients": clients if clients is not None else [client_metadata()],
        "accounts": accounts if accounts is not None else DEFAULT_ACCOUNTS,
        "clock_offset": clock_offset, "groups_in_id_token": groups_in_id_token,
        "conform_id_token_claims": conform_id_token_claims, "pkce_required": pkce_required,
    }
    for key, value in (("claims", claims), ("ttl", ttl), ("features", features),
                       ("client_auth_methods", client_auth_methods)):
        if value is not None:
            config[key] = value
    workdir.mkdir(parents=True, exist_ok=True)
    name = f"certified-idp-{secrets.token_hex(3)}"
    config_path = workdir / f"{name}.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / f"{name}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed by CertifiedIdP.stop()
    process = subprocess.Popen([NODE, str(PROVIDER_SCRIPT), str(config_path)], cwd=ROOT,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file)
    lines: queue.Queue = queue.Queue()

    def read_stdout() -> None:
        # The first line is the announcement; anything after it is drained so the pipe never blocks.
        for raw in iter(process.stdout.readline, b""):
            lines.put(raw)
        lines.put(None)

    threading.Thread(target=read_stdout, name=name, daemon=True).start()
    idp = None
    try:
        first = lines.get(timeout=START_TIMEOUT)
        if first is None:
            raise RuntimeError("the certified IdP exited before listening")
        hello = json.loads(first)
        idp = CertifiedIdP(issuer=hello["issuer"], port=hello["port"], config=config, kids=hello["kids"],
                           process=process, log_path=log_path, oidc_provider_version=hello.get("oidc_provider", ""),
                           _log_file=log_file)
        return idp
    except (queue.Empty, RuntimeError, ValueError, KeyError) as exc:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        process.stdout.close()
        log_file.close()
        log = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the certified IdP did not start ({type(exc).__name__}: {exc}); its log:\n{log}") from None


def _factory(workdir_for: Callable[[], Path]) -> Iterator[Callable[..., CertifiedIdP]]:
    started: list[CertifiedIdP] = []

    def start(**options) -> CertifiedIdP:
        idp = start_certified_idp(workdir_for(), **options)
        started.append(idp)
        return idp

    try:
        yield start
    finally:
        for idp in started:
            idp.stop()


@pytest.fixture
def certified_idp(tmp_path):
    """Factory: ``certified_idp(**options) -> CertifiedIdP``; every provider it starts stops after the test.

    Options (all keyword, all optional): ``clients`` (list of ``client_metadata(...)``; default one
    client "gateway" with secret "gateway-client-secret", RS256, client_secret_basic, redirect
    ``http://gateway.test/auth/callback``, post-logout ``http://gateway.test/signed-out``),
    ``accounts`` ({id: claims}; default ``DEFAULT_ACCOUNTS``: alice verified, bob not),
    ``clock_offset`` (seconds), ``groups_in_id_token``, ``conform_id_token_claims`` (True),
    ``pkce_required`` (True), ``claims`` (scope -> claim names, merged), ``ttl``, ``features``, ``port``.
    """
    yield from _factory(lambda: tmp_path / "certified-idp")


@pytest.fixture(scope="module")
def certified_idp_module(tmp_path_factory):
    """``certified_idp``, module-scoped: start a provider once for a whole module."""
    yield from _factory(lambda: tmp_path_factory.mktemp("certified-idp"))


# ---------------------------------------------------------------- driving the sign-in page
class _Forms(HTMLParser):
    """The forms of a page: id, action, method, inputs (name -> value) and submit buttons.

    Buttons outside a form that name it (``form="id"``, as on oidc-provider's logout page) count too.
    """

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self._open: dict | None = None
        self._bound: list[dict] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._open = {"id": a.get("id", ""), "action": a.get("action", ""),
                          "method": (a.get("method") or "get").lower(), "inputs": {}, "buttons": []}
            self.forms.append(self._open)
        elif tag in ("input", "button"):
            target = None if a.get("form") else self._open
            if tag == "button" or a.get("type") == "submit":
                button = {"name": a.get("name", ""), "value": a.get("value", ""), "id": a.get("id", ""),
                          "form": a.get("form", "")}
                if target is not None:
                    target["buttons"].append(button)
                elif button["form"]:
                    self._bound.append(button)
            elif target is not None and a.get("name"):
                target["inputs"][a["name"]] = a.get("value", "")

    def handle_endtag(self, tag):
        if tag == "form":
            self._open = None


def _forms(html: str) -> list[dict]:
    parser = _Forms()
    parser.feed(html)
    parser.close()
    by_id = {form["id"]: form for form in parser.forms if form["id"]}
    for button in parser._bound:
        if button["form"] in by_id:
            by_id[button["form"]]["buttons"].append(button)
    return parser.forms


def _under(url: str, base: str) -> bool:
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


class IdpPageError(AssertionError):
    """The IdP answered with something the helper did not expect (an error page, an unknown account...)."""


def sign_in_with_requests(authorize_url: str, login: str = "alice", *, action: str = "sign-in",
                          session: requests.Session | None = None, max_hops: int = 10) -> str:
    """Drive a sign-in at the certified IdP with plain HTTP; returns the URL it sends the browser to.

    Follows the IdP's redirects from ``authorize_url``; on its sign-in page, submits ``login``
    with the "Sign in" button (``action="cancel"``: the "Cancel" button). When ``session``
    already holds the IdP's session cookie, there is no page: the redirect comes at once.
    The result is the first URL outside the IdP: the client's redirect_uri with ``code``,
    ``state`` and ``iss`` (or ``error``, ``state`` and ``iss``).
    """
    own = session is None
    http = _recording_session() if own else session
    try:
        issuer_base = authorize_url
        url, method, data = authorize_url, "GET", None
        for _ in range(max_hops):
            response = http.request(method, url, data=data, allow_redirects=False, timeout=15)
            if response.is_redirect:
                url = urljoin(response.url, response.headers["Location"])
                if not _under(url, issuer_base):
                    return url
                method, data = "GET", None
                continue
            page = urlsplit(response.url).path
            if response.status_code != 200 or not page.startswith("/interaction/") or data is not None:
                raise IdpPageError(f"unexpected answer from the IdP at {page}: {response.status_code} "
                                   f"{_page_text(response.text)[:300]}")
            form = next((f for f in _forms(response.text) if f["id"] == "idp-login"), None)
            if form is None:
                raise IdpPageError(f"no sign-in form at {page}")
            url = urljoin(response.url, form["action"])
            method, data = "POST", {**form["inputs"], "login": login, "action": action}
        raise IdpPageError(f"more than {max_hops} hops at the IdP")
    finally:
        if own:
            http.close()


def sign_out_with_requests(end_session_url: str, *, session: requests.Session, sign_out: bool = True,
                           max_hops: int = 10) -> str:
    """RP-initiated logout with plain HTTP: open ``end_session_url``, press "Sign out" (or "Stay
    signed in"), follow the redirects; returns the last URL (the post_logout_redirect_uri with
    ``state``, or the IdP's own "signed out" page). ``session`` holds the IdP session cookie.
    """
    response = session.get(end_session_url, allow_redirects=False, timeout=15)
    if response.status_code != 200:
        raise IdpPageError(f"end_session answered {response.status_code}: {_page_text(response.text)[:300]}")
    forms = _forms(response.text)
    form = next((f for f in forms if f["id"] == "op.logoutForm"), None) or (forms[0] if forms else None)
    if form is None:
        raise IdpPageError("no logout form on the end_session page")
    data = dict(form["inputs"])
    if sign_out or not any(b["id"] == "sign-out" for b in form["buttons"]):
        data["logout"] = "yes"  # also what the no-session auto-submitting form carries
    url = urljoin(response.url, form["action"])
    response = session.post(url, data=data, allow_redirects=False, timeout=15)
    for _ in range(max_hops):
        if not response.is_redirect:
            return response.url
        url = urljoin(response.url, response.headers["Location"])
        if not _under(url, end_session_url):
            return url
        response = session.get(url, allow_redirects=False, timeout=15)
    raise IdpPageError(f"more than {max_hops} hops at the IdP")


def _page_text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def sign_in_with_browser(page, login: str = "alice", *, cancel: bool = False, timeout: float = 15_000) -> None:
    """On the IdP's sign-in page (Playwright ``page``), type ``login`` and press "Sign in" (or "Cancel").

    Returns once the button is pressed; wait for the relying party's URL yourself.
    """
    page.wait_for_selector("form#idp-login", timeout=timeout)
    page.fill("#login", login)
    page.click("#cancel" if cancel else "#sign-in")


def sign_out_with_browser(page, *, stay_signed_in: bool = False, timeout: float = 15_000) -> None:
    """On the IdP's end_session page, press "Sign out" (or "Stay signed in")."""
    page.click("#stay-signed-in" if stay_signed_in else "#sign-out", timeout=timeout)


# ---------------------------------------------------------------- a whole relying party, for comparisons
def callback_params(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


@dataclass
class CodeFlow:
    callback: dict[str, str]  # what came back to the redirect_uri: code, state, iss (or error...)
    token: dict | None  # the token endpoint's answer (access_token, id_token...), when a code came
    nonce: str
    session: Any  # the Authlib OAuth2Session (holds the token: session.get(userinfo_endpoint))

    def userinfo(self, idp: CertifiedIdP) -> dict:
        response = self.session.get(idp.discovery()["userinfo_endpoint"], timeout=15)
        response.raise_for_status()
        return response.json()


def authorization_code_flow(idp: CertifiedIdP, client_id: str = "gateway", login: str = "alice", *,
                            scope: str = DEFAULT_SCOPE, private_key=None, action: str = "sign-in",
                            browser_session: requests.Session | None = None) -> CodeFlow:
    """The whole code flow + PKCE with Authlib's OAuth2Session (no gateway): authorize, sign in with
    ``sign_in_with_requests``, exchange the code with the client's own authentication method
    (``private_key``: the joserfc key of a private_key_jwt client). AUTHLIB_INSECURE_TRANSPORT
    must be set (the IdP and the redirect_uri are plain http).
    """
    from authlib.integrations.requests_client import OAuth2Session
    from authlib.oauth2.rfc7523 import PrivateKeyJWT

    meta = idp.client(client_id)
    method = meta.get("token_endpoint_auth_method", "client_secret_basic")
    token_endpoint = idp.discovery()["token_endpoint"]
    if private_key is not None:  # in the form the installed Authlib signs with (a PEM on Authlib 1.6)
        from gateway.identity.idp import assertion_key

        private_key, alg = assertion_key(private_key.as_pem(private=True).decode())
    session = OAuth2Session(client_id, private_key if method == "private_key_jwt" else meta.get("client_secret"),
                            token_endpoint_auth_method=method, scope=scope,
                            redirect_uri=meta["redirect_uris"][0], code_challenge_method="S256")
    if method == "private_key_jwt":
        session.register_client_auth_method(PrivateKeyJWT(token_endpoint, alg=alg))
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(16)
    url, state = session.create_authorization_url(idp.discovery()["authorization_endpoint"],
                                                  code_verifier=verifier, nonce=nonce)
    back = sign_in_with_requests(url, login, action=action, session=browser_session)
    params = callback_params(back)
    assert params.get("state") == state, f"state mismatch in {params}"
    token = None
    if "code" in params:
        token = session.fetch_token(token_endpoint, authorization_response=back, code_verifier=verifier)
    return CodeFlow(callback=params, token=token, nonce=nonce, session=session)


def verify_id_token(idp: CertifiedIdP, id_token: str, audience: str, *, check_times: bool = True) -> tuple[dict, dict]:
    """(header, claims) of an ID token, its signature checked against the IdP's JWKS (PyJWT)."""
    import jwt

    header = jwt.get_unverified_header(id_token)
    keys = {k["kid"]: k for k in idp.jwks()["keys"]}
    if header.get("kid") not in keys:
        raise AssertionError(f"kid {header.get('kid')} not in the IdP's JWKS {sorted(keys)}")
    key = jwt.PyJWK.from_dict(keys[header["kid"]])
    options = {} if check_times else {"verify_exp": False, "verify_iat": False, "verify_nbf": False}
    claims = jwt.decode(id_token, key, algorithms=[header["alg"]], audience=audience, issuer=idp.issuer,
                        options=options)
    return header, claims
