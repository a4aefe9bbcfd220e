"""Command line: ``python -m gateway demo`` and ``python -m gateway sim``."""
from __future__ import annotations

import argparse
import logging
import secrets
import sys
import tempfile
from pathlib import Path

from . import ROOT
from . import config as settings


def _partner(value: str) -> tuple[str, str]:
    key, sep, secret = value.partition(":")
    if not sep or not key or not secret:
        raise argparse.ArgumentTypeError("expected KEY:SECRET")
    return key, secret


def run_sim(args: argparse.Namespace) -> int:
    from .sim import create_sim_app
    from .sim.server import ServerThread

    # The demo's gateway sets up its own logging; the stand-in alone needs this.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    app = create_sim_app(dict(args.partner), rate_limit=args.rate_limit, token_ttl=args.token_ttl,
                         poll_ms=args.poll_ms)
    server = ServerThread(app, args.host, args.port)
    print(f"Zipteams stand-in listening on {server.url} "
          f"(token API {server.url}/api/v1, dashboard {server.url}/dashboard/)", flush=True)
    server.serve_until_interrupted()
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from . import create_app
    from .sim import create_sim_app
    from .sim.server import ServerThread

    key, secret = "demo-" + secrets.token_hex(6), secrets.token_urlsafe(24)
    state_dir = tempfile.TemporaryDirectory(prefix="zipteams-demo-")
    sim = ServerThread(create_sim_app({key: secret}, token_ttl=args.token_ttl), "127.0.0.1", 0).start()
    app = create_app({
        "ZIPTEAMS_API_KEY": key,
        "ZIPTEAMS_API_SECRET": secret,
        "ZIPTEAMS_API_URL": sim.url + "/api/v1",
        "ZIPTEAMS_DASHBOARD_URL": sim.url + "/dashboard/",
        "GATEWAY_SECRET_KEY": secrets.token_urlsafe(32),
        "GATEWAY_TENANTS_FILE": str(args.tenants),
        "GATEWAY_AUTH_MODE": "demo",
        "GATEWAY_EMBED_MODE": args.mode,
        "GATEWAY_COOKIE_SECURE": "false",
        "GATEWAY_LOG_LEVEL": "INFO",
        "GATEWAY_LOG_FORMAT": "text",  # a person reads this console
        "GATEWAY_STATE_DB": str(Path(state_dir.name) / "state.db"),
        "DEMO_COMMAND": True,
    })
    server = ServerThread(app, args.host, args.port)
    print(f"Zipteams embed gateway demo ({args.mode} mode): open {server.url}/ in your browser.\n"
          f"Stand-in Zipteams at {sim.url}. Press Ctrl+C to stop.", flush=True)
    try:
        server.serve_until_interrupted()
    finally:
        sim.stop()
        state_dir.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway",
                                     description="Zipteams Insights embed gateway tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the gateway and the Zipteams stand-in together")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--mode", choices=("proxy", "iframe"), default="proxy")
    demo.add_argument("--tenants", default=ROOT / "tenants.example.toml")
    demo.add_argument("--token-ttl", type=int, default=86400, help="stand-in token lifetime, seconds")
    demo.set_defaults(func=run_demo)

    sim = sub.add_parser("sim", help="run the Zipteams stand-in (token API and dashboard)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8080)
    sim.add_argument("--partner", type=_partner, action="append", required=True,
                     metavar="KEY:SECRET", help="a partner's API key and secret (repeatable)")
    sim.add_argument("--rate-limit", type=int, default=None, metavar="N",
                     help="token requests per minute per partner (default unlimited)")
    sim.add_argument("--token-ttl", type=int, default=86400, help="token lifetime, seconds")
    sim.add_argument("--poll-ms", type=int, default=15000, help="how often the dashboard refreshes its data")
    sim.set_defaults(func=run_sim)

    table = sub.add_parser("settings", help="print the settings table (Markdown) for the README")
    table.set_defaults(func=lambda _args: print(settings.markdown_table(), end="") or 0)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except OSError as exc:
        print(f"gateway: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
