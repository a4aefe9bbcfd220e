"""The dashboard reverse proxy: ``/dashboard/<path>`` on our origin, token attached here.

The browser only ever talks to the gateway. Each request under ``/dashboard/``
is checked (``paths``: it must stay inside the base path), reduced to what the
dashboard may see (``policy``: an allow-list of headers, the dashboard's own
cookies), given the session's token server-side in its one designated place
and forwarded to the same path under ``ZIPTEAMS_DASHBOARD_URL`` (``view``, ``upstream``).
The answer streams back with every token this gateway holds for the team
replaced by a per-user, per-team placeholder (``relay``, ``scrub``, ``placeholders``), so no token
ever reaches the browser. The dashboard's failures are noted for the embed page (``health``).
"""
from gateway.delivery.proxy.paths import upstream_path
from gateway.delivery.proxy.placeholders import PLACEHOLDER, bound_match, placeholder_for
from gateway.delivery.proxy.scrub import Pattern, Scrubber
from gateway.delivery.proxy.upstream import DashboardProxy
from gateway.delivery.proxy.view import bp, init_app
from gateway.delivery.proxy import health  # noqa: E402,F401  (notes the dashboard's failures for the embed page)

__all__ = ["DashboardProxy", "PLACEHOLDER", "Pattern", "Scrubber", "bound_match", "bp", "init_app",
           "placeholder_for", "upstream_path"]
