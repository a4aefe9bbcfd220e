"""Command line: ``python -m gateway demo`` and ``python -m gateway sim``."""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import shlex
import signal
import sys
import tempfile

from gateway import ROOT
from gateway import config as settings
from gateway import statedir


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
# URLs, the demo sign-in, and one process, whose rate budget toward the stand-in is therefore
# never split between workers. Cookies are the environment's to decide (cross-site embedding
# needs SameSite=None and Secure); without a word from it, plain HTTP on loopback.
DEMO_OWNS = {
    "GATEWAY_AUTH_MODE": "demo",
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
    partner = getattr(args, "partner_origin", None)
    if partner:  # the example partner page frames the gateway from another site
        config.setdefault("GATEWAY_COOKIE_SAMESITE", "None")
        ancestors = config.get("GATEWAY_FRAME_ANCESTORS", "'self'")
        config["GATEWAY_FRAME_ANCESTORS"] = f"{ancestors} {partner}"
    # Secure cookies need HTTPS, or http://localhost in browsers that treat it as secure (Chromium,
    # Firefox): the default is Secure exactly when SameSite=None, which browsers refuse without it.
    config.setdefault("GATEWAY_COOKIE_SECURE", "true" if config.get("GATEWAY_COOKIE_SAMESITE") == "None" else "false")
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


def cli_environment(app, sim_url: str, key: str, secret: str, directory: str) -> str:
    """A file of shell lines that point the admin CLI (``flask --app wsgi gateway check``) at the
    demo's stand-in; returns its path.

    The credentials are the stand-in's own, made for this run; the secret key is a fresh one (the
    CLI signs nothing a browser sees). They go to a file only this user can read (0600, in the
    demo's private directory, removed when the demo stops), never to standard output, where a
    supervisor or a terminal recorder may keep the demo's log lines."""
    values = {
        "ZIPTEAMS_API_URL": sim_url + "/api/v1",
        "ZIPTEAMS_DASHBOARD_URL": sim_url + "/dashboard/",
        "ZIPTEAMS_API_KEY": key,
        "ZIPTEAMS_API_SECRET": secret,
        "GATEWAY_SECRET_KEY": secrets.token_urlsafe(32),
        "GATEWAY_TENANTS_FILE": str(app.config["GATEWAY_TENANTS_FILE"]),
    }
    path = os.path.join(directory, "admin-cli.env")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(f"export {name}={shlex.quote(value)}\n" for name, value in values.items())
    return path


def run_demo(args: argparse.Namespace) -> int:
    from gateway import create_app
    from gateway.sim import create_sim_app
    from gateway.sim.server import ServerThread
    from gateway.tenancy.rules import RulesError

    key, secret = "demo-" + secrets.token_hex(6), secrets.token_urlsafe(24)
    try:
        # The demo's sessions in a directory of its own inside the gateway's private one (never the
        # shared temporary directory), removed when the demo stops.
        parent = statedir.private_dir(statedir.state_dir(os.environ.get("GATEWAY_STATE_DIR", "")))
    except settings.ConfigError as exc:
        print(f"gateway: cannot start the demo: {exc}", file=sys.stderr)
        return 3
    state_dir = tempfile.TemporaryDirectory(prefix="demo-", dir=parent)
    try:
        sim = ServerThread(create_sim_app({key: secret}, token_ttl=args.token_ttl), "127.0.0.1", args.sim_port)
    except OSError as exc:
        print(f"gateway: the stand-in cannot listen on 127.0.0.1:{args.sim_port} ({exc.strerror or exc}); "
              "choose another port with --sim-port, or --sim-port 0 for any free one", file=sys.stderr)
        return 1
    sim.start()
    partner, partner_app_slot = None, {}
    if args.partner_port is not None:
        try:
            partner = ServerThread(lambda environ, start: partner_app_slot["app"](environ, start),
                                   "127.0.0.1", args.partner_port)
        except OSError as exc:
            sim.stop()
            print(f"gateway: the partner page cannot listen on 127.0.0.1:{args.partner_port} "
                  f"({exc.strerror or exc}); choose another port, or 0 for any free one", file=sys.stderr)
            return 1
        args.partner_origin = partner.url
    try:
        config = demo_config(settings.environment_settings(), args, sim.url, key, secret, state_dir.name)
        try:
            app = create_app(config)
        except (settings.ConfigError, RulesError) as exc:
            print(f"gateway: cannot start the demo: {exc}", file=sys.stderr)
            return 3
        port = app.config["PORT"] if args.port is None else args.port
        server = ServerThread(app, args.host, port)
        mode = app.config["GATEWAY_EMBED_MODE"]
        # Another site than the partner page's 127.0.0.1, and a secure context for Secure cookies.
        gateway_url = f"http://localhost:{server.port}" if partner else server.url
        if partner:
            from gateway.sim.partner import partner_app

            partner_app_slot["app"] = partner_app(ROOT / "examples" / "host", gateway_url)
            partner.start()
        # SIGTERM, and SIGHUP (its terminal closed), stop it as Ctrl+C does, so the state directory
        # (session ids, the CLI's credentials) goes either way; set before the line below, which
        # tells a caller the demo is up.
        previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
        try:
            print(f"Zipteams embed gateway demo ({mode} mode): open {gateway_url}/ in your browser.\n"
                  f"Stand-in Zipteams at {sim.url}. Press Ctrl+C to stop.", flush=True)
            if partner:
                print(f"A partner's page framing the gateway from another site: open {partner.url}/", flush=True)
            env_file = cli_environment(app, sim.url, key, secret, state_dir.name)
            print("The admin CLI against this stand-in, in another shell in "
                  f"{ROOT} (its throwaway credentials are in a file only you can read, removed when "
                  f"the demo stops):", f"  . {shlex.quote(env_file)}",
                  "  flask --app wsgi gateway check", sep="\n", flush=True)
            server.serve_until_interrupted()
        except KeyboardInterrupt:
            pass  # between the line above and serving
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        sim.stop()
        if partner and "app" in partner_app_slot:
            partner.stop()
        elif partner:  # bound, never served: shutdown() would wait for a loop that never ran
            partner.server.server_close()
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
                    "URLs, its own sign-in page and one process (WEB_CONCURRENCY=1), and writes the "
                    "environment that points the admin CLI at its stand-in to a file only you can read.")
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
    demo.add_argument("--partner-port", type=_port, default=None, metavar="PORT",
                      help="also serve examples/host/ as a partner's page on http://127.0.0.1:PORT, framing "
                           "the gateway at http://localhost (another site; 0: any free port)")
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

    table = sub.add_parser("settings", help="print the settings table (Markdown) for docs/settings.md")
    table.set_defaults(func=lambda _args: print(settings.markdown_table(), end="") or 0)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except OSError as exc:
        print(f"gateway: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
