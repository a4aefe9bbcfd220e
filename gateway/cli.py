"""Admin commands: ``flask --app wsgi gateway check | explain | tenants``.

Exit codes a script can trust: 0 all good; 1 the check failed (Zipteams
refused or failed, or the user would see no dashboard); 2 wrong usage (click's
own); 3 settings or tenants file invalid (raised while loading ``wsgi``).
Nothing here prints a secret or a token: tokens appear as their claims,
expiry and fingerprint.
"""
from __future__ import annotations

import datetime
import sys

import click
import jwt
from flask import Flask, current_app
from flask.cli import AppGroup

from .config import redact_url
from .zipteams import ZipteamsError

gateway_cli = AppGroup("gateway", help="Check the configuration and explain the tenant rules.")


def _rules():
    return current_app.extensions["rules"].current()


@gateway_cli.command("tenants")
def tenants_command():
    """List the subtenant rules in force."""
    rules = _rules()
    click.echo(f"{len(rules)} subtenant rules from {current_app.config['GATEWAY_TENANTS_FILE']}")
    for s in rules.subtenants:
        click.echo(f"\n{s.key}  {s.name}")
        for label, values in (("emails", s.emails), ("email_domains", s.email_domains), ("groups", s.groups)):
            if values:
                click.echo(f"  {label}: {', '.join(sorted(values))}")


@gateway_cli.command("explain")
@click.argument("email")
@click.option("--groups", default="", help="Comma-separated groups, as the SSO would send them.")
def explain_command(email: str, groups: str):
    """Which rules match EMAIL (and groups), and what that user would see."""
    from .tenants import normalize_email

    group_list = tuple(g.strip() for g in groups.split(",") if g.strip())
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


@gateway_cli.command("check")
@click.option("--subtenant", "key", metavar="TENANT/SUBTENANT",
              help="Which subtenant to request a token for (default: the first rule).")
def check_command(key: str | None):
    """Validate every setting and the tenants file, then make one real token request."""
    cfg = current_app.config
    rules = _rules()
    click.echo(f"settings: ok (auth mode {cfg['GATEWAY_AUTH_MODE']}, embed mode {cfg['GATEWAY_EMBED_MODE']}, "
               f"cache {redact_url(cfg['GATEWAY_CACHE_URL'])})")
    click.echo(f"tenants file: ok ({len(rules)} subtenant rules)")
    shared = current_app.extensions["shared"]
    if shared is not None:
        click.echo("shared cache: " + ("reachable" if shared.ping() else "UNREACHABLE (the gateway would "
                                                                          "still serve, per process)"))
    subtenant = rules.get(key) if key else rules.subtenants[0]
    if subtenant is None:
        click.echo(f"no rule for subtenant {key!r}; known: {', '.join(s.key for s in rules.subtenants)}", err=True)
        sys.exit(2)
    try:
        token = current_app.extensions["zipteams"].fetch_token(subtenant.tenant, subtenant.id)
    except ZipteamsError as exc:
        click.echo(f"token request for {subtenant.key}: FAILED ({exc.code}): {exc.detail}", err=True)
        sys.exit(1)
    claims = jwt.decode(token.value, options={"verify_signature": False})
    expires = datetime.datetime.fromtimestamp(token.expires_at, datetime.timezone.utc)
    click.echo(f"token request for {subtenant.key}: ok")
    shown = {k: v for k, v in claims.items() if k not in ("jti",)}
    click.echo(f"  claims: {shown}")
    click.echo(f"  expires: {expires:%Y-%m-%d %H:%M:%S} UTC "
               f"(in {(token.expires_at - token.issued_at) / 3600:.1f} h from issue)")
    click.echo(f"  fingerprint: {token.fingerprint}")


def init_app(app: Flask) -> None:
    app.cli.add_command(gateway_cli)
