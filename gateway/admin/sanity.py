"""Settings that parse but would still fail users: GATEWAY_PUBLIC_URL and GATEWAY_FRAME_ANCESTORS.

``config.py`` refuses what is malformed; these are well-formed values a browser will
not work with (a Secure session cookie on plain HTTP, a sign-in callback under a
path the gateway does not serve). Part of ``gateway check``; nothing here touches
the network.
"""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from gateway.admin.findings import Finding


def is_loopback(host: str | None) -> bool:
    """localhost and loopback addresses: browsers treat http:// there as a secure context."""
    host = (host or "").strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def public_url(cfg) -> list[Finding]:
    url = cfg["GATEWAY_PUBLIC_URL"]
    if not url:
        return []
    parts = urlsplit(url)
    shown = url
    problems = []
    if parts.scheme == "http" and not is_loopback(parts.hostname) and cfg["GATEWAY_COOKIE_SECURE"]:
        problems.append(Finding(
            "public URL", False, "plain http:// on a host that is not loopback: browsers never send the "
            "Secure session cookie back over it, so every sign-in starts again",
            setting="GATEWAY_PUBLIC_URL", url=shown,
            fix="serve the gateway over https:// and give that URL (GATEWAY_COOKIE_SECURE=false is for "
                "plain-HTTP testing only)"))
    if parts.path not in ("", "/"):
        problems.append(Finding(
            "public URL", False, f"has a path ({parts.path}): the gateway serves from the root of its origin, "
            "so the sign-in callback and sign-out URLs built from it would miss",
            setting="GATEWAY_PUBLIC_URL", url=shown,
            fix=f"give only the origin, {parts.scheme}://{parts.netloc}, and serve the gateway at its root"))
    if not problems:
        return [Finding("public URL", True, f"ok ({shown})")]
    return problems


def frame_ancestors(cfg) -> list[Finding]:
    sources = cfg["GATEWAY_FRAME_ANCESTORS"].split()
    lowered = [s.lower() for s in sources]
    problems = []
    if "'none'" in lowered and len(sources) > 1:
        problems.append(Finding(
            "frame ancestors", False, "lists 'none' together with other sources: browsers then ignore 'none', "
            "and the meaning is not what either half says", setting="GATEWAY_FRAME_ANCESTORS",
            fix="keep 'none' alone (no framing), or remove it and list the pages allowed to frame the gateway"))
    for source in sources:
        if source.lower().startswith("http://") and not is_loopback(urlsplit(source).hostname):
            problems.append(Finding(
                "frame ancestors", False, f"{source} is a plain-HTTP page: the gateway's signed-in pages would "
                "sit inside a page anyone on the network can change", setting="GATEWAY_FRAME_ANCESTORS",
                url=source, fix=f"serve that page over https:// and list https://{source[len('http://'):]}"))
    if problems:
        return problems
    others = [s for s in sources if s.lower() not in ("'self'", "'none'")]
    note = ""
    if others and cfg["GATEWAY_COOKIE_SAMESITE"] != "None":
        # Same-site pages (another subdomain of the same registrable domain) work with Lax;
        # telling them apart needs the public-suffix list, so this is a note, not a failure.
        note = (f"; if any of them is another site (not a subdomain of the gateway's own domain), "
                f"set GATEWAY_COOKIE_SAMESITE=None (it is {cfg['GATEWAY_COOKIE_SAMESITE']})")
    return [Finding("frame ancestors", True, f"ok ({' '.join(sources)}){note}")]


def findings(cfg) -> list[Finding]:
    return public_url(cfg) + frame_ancestors(cfg)
