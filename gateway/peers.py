"""Whether the connecting peer is one we trust: a proxy that vouches for users, a metrics scraper.

Kept apart from ``auth`` so that logging (request ids from trusted proxies) can
use it without importing the login code.
"""
from __future__ import annotations

import ipaddress

from gateway.memo import Memo

_verdicts = Memo(1024)  # a few peers (the proxy, the scraper) ask on every request


def peer_is_trusted(addr: str | None, networks) -> bool:
    """True when the connecting peer's address lies in one of ``networks`` (a tuple)."""
    return _verdicts.get_or_make((addr, networks), lambda: _in_networks(addr, networks))


def _in_networks(addr: str | None, networks) -> bool:
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:
        return False
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)
