"""Command line: ``python -m gateway demo`` and ``python -m gateway sim``."""
from __future__ import annotations

import argparse
import logging
import secrets
import signal
import sys
import tempfile

from gateway import ROOT
from gateway import config as settings


def _partner(value: str) -> tuple[str, str]:
    key, sep, secret = value.partition(":")
    if not sep or not key or not secret:
        raise argparse.ArgumentTypeError("expected KEY:SECRET")
    return key, secret


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("expected a port from 0 to 65535")
    return port


def run_sim(args: argparse.Namespace) -> int:
    from gateway.sim import create_sim_app
    from gateway.sim.server import ServerThread

    # The demo's gateway sets up its own logging; the stand-in alone needs this.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    app = create_sim_app(dict(args.partner), rate_limit=args.rate_limit, token_ttl=args.token_ttl,
                         poll_ms=args.poll_ms)
    server = ServerThread(app, args.host, args.port)
    print(f"Zipteams stand-in listening on {server.url} "
          f"(token API {server.url}/api/v1, dashboard {server.url}/dashboard/)", flush=True)
    server.serve_until_interrupted()
    return 0


# What the demo decides whatever the environment says: its own stand-in's credentials and
# URLs, the demo sign-in, cookies over plain HTTP on loopback, and one process, whose
# rate budget toward the stand-in is therefore never split between workers.
DEMO_OWNS = {
    "GATEWAY_AUTH_MODE": "demo",
    "GATEWAY_COOKIE_SECURE": "false",
    "WEB_CONCURRENCY": "1",
}
# A user no rule names, so the "not linked to a team" page can be seen.
DEMO_USER_WITHOUT_TEAM = "no-team@demo.example"
DEFAULT_SIM_PORT = 8080


def demo_config(environment: dict[str, str], args: argparse.Namespace, sim_url: str, key: str, secret: str,
                state_dir: str) -> dict:
    """The demo's settings: the environment's (branding, modes, idle times, rate limits...),
    flags where given, the demo's own where it must decide, defaults for a console."""
    config: dict = {
        "GATEWAY_TENANTS_FILE": str(ROOT / "tenants.example.toml"),
        "GATEWAY_LOG_FORMAT": "text",  # a person reads this console
        "GATEWAY_STATE_DIR": state_dir,
    }
    if "GATEWAY_SECRET_KEY_FILE" not in environment:  # both at once would be refused
        config["GATEWAY_SECRET_KEY"] = secrets.token_urlsafe(32)
    owned = {"ZIPTEAMS_API_KEY", "ZIPTEAMS_API_SECRET", "ZIPTEAMS_API_URL", "ZIPTEAMS_DASHBOARD_URL", *DEMO_OWNS}
    config.update({name: value for name, value in environment.items()
                   if name not in owned and name.removesuffix("_FILE") not in owned})
    if args.mode:
        config["GATEWAY_EMBED_MODE"] = args.mode
    if args.tenants:
        config["GATEWAY_TENANTS_FILE"] = str(args.tenants)
    config.update(DEMO_OWNS)
    config.update({
        "ZIPTEAMS_API_KEY": key,
        "ZIPTEAMS_API_SECRET": secret,
        "ZIPTEAMS_API_URL": sim_url + "/api/v1",
        "ZIPTEAMS_DASHBOARD_URL": sim_url + "/dashboard/",
        "DEMO_COMMAND": True,
        "DEMO_EXTRA_USERS": (DEMO_USER_WITHOUT_TEAM,),
    })
    return config


def run_demo(args: argparse.Namespace) -> int:
    from gateway import create_app
    from gateway.sim import create_sim_app
    from gateway.sim.server import ServerThread
    from gateway.tenancy.rules import RulesError

    key, secret = "demo-" + secrets.token_hex(6), secrets.token_urlsafe(24)
    try:
        sim = ServerThread(create_sim_app({key: secret}, token_ttl=args.token_ttl), "127.0.0.1", args.sim_port)
    except OSError as exc:
        print(f"gateway: the stand-in cannot listen on 127.0.0.1:{args.sim_port} ({exc.strerror or exc}); "
              "choose another port with --sim-port, or --sim-port 0 for any free one", file=sys.stderr)
        return 1
    sim.start()
    state_dir = tempfile.TemporaryDirectory(prefix="zipteams-demo-")
    try:
        config = demo_config(settings.environment_settings(), args, sim.url, key, secret,
                             state_dir.name)  # mkdtemp: 0700, a name nobody can guess
        try:
            app = create_app(config)
        except (settings.ConfigError, RulesError) as exc:
            print(f"gateway: cannot start the demo: {exc}", file=sys.stderr)
            return 3
        port = app.config["PORT"] if args.port is None else args.port
        server = ServerThread(app, args.host, port)
        mode = app.config["GATEWAY_EMBED_MODE"]
        # SIGTERM stops it as Ctrl+C does, so the state directory (session ids) goes either way;
        # set before the line below, which tells a caller the demo is up.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            print(f"Zipteams embed gateway demo ({mode} mode): open {server.url}/ in your browser.\n"
                  f"Stand-in Zipteams at {sim.url}. Press Ctrl+C to stop.", flush=True)
            server.serve_until_interrupted()
        except KeyboardInterrupt:
            pass  # between the line above and serving
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        sim.stop()
        state_dir.cleanup()
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway",
                                     description="Zipteams Insights embed gateway tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="run the gateway and the Zipteams stand-in together",
        description="Run the gateway and a Zipteams stand-in together on this machine. Every other "
                    "setting (branding, embed mode, idle times, rate limits...) is read from the "
                    "environment as in production; the demo supplies the stand-in's credentials and "
                    "URLs, its own sign-in page, cookies over plain HTTP and one process "
                    "(WEB_CONCURRENCY=1).")
    demo.add_argument("--host", default="127.0.0.1", help="address the gateway listens on (default: 127.0.0.1)")
    demo.add_argument("--port", type=_port, default=None,
                      help="port the gateway listens on (default: $PORT if set, else 8000)")
    demo.add_argument("--sim-port", type=_port, default=DEFAULT_SIM_PORT, metavar="PORT",
                      help=f"port of the Zipteams stand-in (default: {DEFAULT_SIM_PORT}; 0: any free port)")
    demo.add_argument("--mode", choices=("proxy", "iframe"), default=None,
                      help="embed mode (default: $GATEWAY_EMBED_MODE if set, else proxy)")
    demo.add_argument("--tenants", default=None, metavar="FILE",
                      help="tenant rules (default: $GATEWAY_TENANTS_FILE if set, else tenants.example.toml)")
    demo.add_argument("--token-ttl", type=int, default=86400, metavar="SECONDS",
                      help="lifetime of the stand-in's tokens (default: 86400; 60 shows renewal)")
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
