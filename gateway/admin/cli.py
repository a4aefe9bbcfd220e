"""Admin commands: ``flask --app wsgi gateway check | explain | tenants``.

Exit codes a script can trust (``check``'s in full in ``gateway.admin.preflight``):
0 all good; 1 a check failed (Zipteams, the dashboard, the IdP, a JWKS or Redis, or
a public URL or framing setting that would fail users); 2 wrong usage (click's
own); 3 settings or tenants file invalid, every problem listed in one run.
``--help`` works without any settings (``unconfigured_app``). Nothing here prints
a secret or a token: tokens appear as their claims, expiry and fingerprint.
"""
from __future__ import annotations

import datetime
import json
import math
import sys

import click
from flask import Flask, abort, current_app
from flask.cli import AppGroup

from gateway.config import redact_url
from gateway.tenancy.rules import RulesError
from gateway.tokens.claims import unverified_claims
from gateway.tokens.client import ZipteamsError
from gateway.tokens.protection import CONFIG_HINTS

CLAIMS_SHOWN = 500

gateway_cli = AppGroup("gateway", help="Check the configuration and explain the tenant rules.")


def _rules():
    return current_app.extensions["rules"].current()


@gateway_cli.command("tenants")
def tenants_command():
    """List the subtenant rules in force."""
    _configured()
    rules = _rules()
    click.echo(f"{len(rules)} subtenant rules from {current_app.config['GATEWAY_TENANTS_FILE']}")
    for s in rules.subtenants:
        click.echo(f"\n{s.key}  {s.name}")
        for label, values in (("emails", s.emails), ("email_domains", s.email_domains), ("groups", s.groups)):
            if values:
                click.echo(f"  {label}: {', '.join(sorted(values))}")


@gateway_cli.command("explain")
@click.argument("email", required=False)
@click.option("--groups", default="", help="Comma-separated groups, as the SSO would send them.")
@click.option("--claims", "claims_file", type=click.File("r"),
              help="OIDC: a JSON file of a user's claims (a decoded ID token, merged with userinfo); "
                   "email and groups are read from it as a sign-in would read them.")
def explain_command(email: str | None, groups: str, claims_file):
    """Which rules match EMAIL (and groups), and what that user would see."""
    from gateway.tenancy.rules import normalize_email

    _configured()
    group_list = tuple(g.strip() for g in groups.split(",") if g.strip())
    if claims_file is not None:
        email, group_list = _from_claims(json.load(claims_file))
    if not email:
        raise click.UsageError("give EMAIL or --claims")
    address = normalize_email(email)
    if address is None:
        click.echo(f"{email!r} is not one well-formed email address: no email or domain rule can match it.")
    matches = _rules().match(email, group_list)
    if not matches:
        click.echo(f"No rule matches {email} (groups: {', '.join(group_list) or 'none'}).")
        click.echo("They would see: 403 \"Your account is not linked to a team\".")
        sys.exit(1)
    for m in matches:
        click.echo(f"matches {m.key} ({m.subtenant.name}) by {m.reason}")
    if len(matches) == 1:
        click.echo(f"They would see: the {matches[0].subtenant.name} dashboard.")
    else:
        click.echo(f"They would see: a choice between {len(matches)} teams at /select.")


def _from_claims(claims: dict) -> tuple[str, tuple[str, ...]]:
    """Email and groups exactly as a sign-in reads them (gateway.identity.users), or exit 1."""
    from gateway.identity.idp import OVERAGE_HINT, email_claims, groups_overage
    from gateway.identity.users import ClaimsRejected, user_from_claims

    cfg = current_app.config
    try:
        user = user_from_claims(claims, email_claims(cfg), cfg["OIDC_GROUPS_CLAIM"],
                                require_verified_email=cfg["OIDC_REQUIRE_VERIFIED_EMAIL"])
    except ClaimsRejected as exc:
        click.echo(f"The sign-in would be refused: {exc}.")
        sys.exit(1)
    if groups_overage(claims, cfg["OIDC_GROUPS_CLAIM"]):
        click.echo(f"groups overage: the IdP sent a pointer instead of {cfg['OIDC_GROUPS_CLAIM']!r}: {OVERAGE_HINT}.")
    return user.email, user.groups


@gateway_cli.command("check")
@click.option("--subtenant", "key", metavar="TENANT/SUBTENANT",
              help="Which subtenant to request a token for (default: the first rule).")
@click.option("--all", "every", is_flag=True,
              help="Request a token for every subtenant in the rules (one request each) and report "
                   "each one's configuration errors.")
def check_command(key: str | None, every: bool):
    """Preflight of the whole path: settings, tenants file, Zipteams, the dashboard, the IdP, Redis.

    Exit 0: all passed; 1: a check failed (each failure names the setting, the URL tried and
    the fix); 2: wrong usage; 3: settings or tenants file invalid (every problem listed).
    """
    from gateway.admin import preflight, sanity

    _configured()
    cfg = current_app.config
    rules = _rules()
    subtenant = rules.get(key) if key else rules.subtenants[0]
    if subtenant is None:
        click.echo(f"no rule for subtenant {key!r}; known: {', '.join(s.key for s in rules.subtenants)}", err=True)
        sys.exit(2)
    click.echo(f"settings: ok (auth mode {cfg['GATEWAY_AUTH_MODE']}, embed mode {cfg['GATEWAY_EMBED_MODE']}, "
               f"cache {redact_url(cfg['GATEWAY_CACHE_URL'])})")
    click.echo(f"tenants file: ok ({len(rules)} subtenant rules)")
    click.echo(warm_up_line(cfg, len(rules)))
    app = current_app._get_current_object()  # the checks run side by side in threads of their own
    found, token = preflight.network(app, subtenant, cfg["ZIPTEAMS_TIMEOUT"], zipteams_too=not every)
    failed = _report(sanity.findings(cfg))
    if every:
        failed += _report(found)
        token, failed_tokens = _check_every_subtenant(rules)
        failed += failed_tokens
        if token is not None:
            failed += _report([preflight.dashboard(app, token, cfg["ZIPTEAMS_TIMEOUT"])])
    else:
        failed += _report(found[:1])  # the token request, with what the token says right under it
        if token is not None:
            _describe(token)
        failed += _report(found[1:])
    if failed:
        click.echo(f"{failed} check{'s' if failed != 1 else ''} failed", err=True)
        sys.exit(1)


def _describe(token) -> None:
    claims = str({k: v for k, v in unverified_claims(token.value).items() if k not in ("jti",)})
    if len(claims) > CLAIMS_SHOWN:  # a token's claims are the vendor's: a few hundred characters, or anything
        claims = f"{claims[:CLAIMS_SHOWN]}... ({len(claims)} characters)"
    expires = datetime.datetime.fromtimestamp(token.expires_at, datetime.timezone.utc)
    click.echo(f"  claims: {claims}")
    click.echo(f"  expires: {expires:%Y-%m-%d %H:%M:%S} UTC "
               f"(in {(token.expires_at - token.issued_at) / 3600:.1f} h from issue)")
    click.echo(f"  fingerprint: {token.fingerprint}")


def _report(found) -> int:
    """Print each finding (failures to stderr); the number that failed."""
    for finding in found:
        click.echo(finding.line(), err=not finding.ok)
    return sum(1 for f in found if not f.ok)


def _check_every_subtenant(rules):
    """One token request per subtenant: a misconfigured one is named with what to fix.

    Returns the first token obtained (for the dashboard check) and how many failed.
    """
    from gateway.admin.preflight import token_fix

    failed, first = 0, None
    for subtenant in rules.subtenants:
        try:
            got = current_app.extensions["zipteams"].fetch_token(subtenant.tenant, subtenant.id)
        except ZipteamsError as exc:
            failed += 1
            setting, fix = token_fix(exc, current_app.config["ZIPTEAMS_API_URL"])
            hint = CONFIG_HINTS.get(exc.code, f"{setting}: {fix}")
            click.echo(f"token request for {subtenant.key}: FAILED ({exc.code}): {hint}", err=True)
            continue
        first = first or got
        click.echo(f"token request for {subtenant.key}: ok")
    click.echo(f"{len(rules.subtenants) - failed} of {len(rules.subtenants)} subtenants got a token")
    return first, failed


def _configured() -> None:
    """When the settings or tenants file could not be loaded (``unconfigured_app``): every problem, exit 3."""
    problem = current_app.extensions.get("unconfigured")
    if problem is None:
        return
    problems = getattr(problem, "problems", [str(problem)])
    label = "tenants file" if isinstance(problem, RulesError) else "settings"
    click.echo(f"{label}: {len(problems)} problem{'s' if len(problems) != 1 else ''}, to fix before anything "
               "else can be checked:", err=True)
    for line in problems:
        click.echo(f"  {line}", err=True)
    tenants = current_app.extensions.get("unconfigured_tenants")
    if tenants:
        click.echo(f"tenants file: {tenants}", err=True)
    sys.exit(3)


def _tenants_problem() -> str | None:
    """The tenants file's own problem, when its setting is fine but others are not: in the same run."""
    from gateway.config import ConfigError, value
    from gateway.tenancy.rules import load_rules

    try:
        load_rules(value("GATEWAY_TENANTS_FILE"))
    except ConfigError:
        return None  # the setting itself is missing or invalid: named with the settings
    except RulesError as exc:
        return str(exc)
    return None


def unconfigured_app(problem: Exception) -> Flask:
    """What ``flask --app wsgi`` loads when the settings or tenants file do not: ``--help`` works,
    every command lists the problems and exits 3, and it serves nothing (503)."""
    app = Flask("gateway")
    app.extensions["unconfigured"] = problem
    app.extensions["unconfigured_tenants"] = None if isinstance(problem, RulesError) else _tenants_problem()
    app.before_request(lambda: abort(503))
    init_app(app)
    return app


def warm_up_line(cfg, teams: int) -> str:
    """How long the rate budget takes to give every team its first token after a cold start."""
    from gateway.tokens.budget import budget_per_minute, first_token_limit, process_share

    shared = cfg["GATEWAY_CACHE_URL"] != "memory://"
    workers = cfg["WEB_CONCURRENCY"]
    # Without Redis every worker fetches every team for itself, each from its own share of the budget.
    fetching = 1 if shared else workers
    per_minute = budget_per_minute(cfg["ZIPTEAMS_MAX_RPM"], teams=teams, processes=fetching,
                                   cooldown=cfg["GATEWAY_BREAKER_COOLDOWN"])
    sized = "auto, from the rules" if cfg["ZIPTEAMS_MAX_RPM"] == "auto" else "set"
    if shared:
        cold = first_token_limit(per_minute)
        budget = f"ZIPTEAMS_MAX_RPM={per_minute} ({sized}) lets {cold} a minute go to first tokens"
        where = "one fetch per team for every worker and instance, through Redis"
    else:
        share = process_share(per_minute, workers)
        cold = first_token_limit(share)
        budget = (f"ZIPTEAMS_MAX_RPM={per_minute} ({sized}) gives each worker {share} a minute of its own, "
                  f"{cold} of them for first tokens")
        where = f"{workers} workers, each fetching every team for itself"
    # The workers warm in parallel, each through its own share.
    minutes = math.ceil(teams / cold) if teams else 0
    return (f"warm-up: {teams} teams need {teams * fetching} first-token requests ({where}); {budget}, "
            f"the rest is kept for refreshes: every team served within about {minutes} "
            f"minute{'s' if minutes != 1 else ''} of a cold start")


def init_app(app: Flask) -> None:
    app.cli.add_command(gateway_cli)
