"""The real-traffic workloads of bench/run.py: many users, many subtenants, and nginx.

- rules_text(): the rules file: the single-user team (sales-us) plus TEAMS subtenants
  team00..team49 (tenant acme), each matched by its email domain teamNN.acme.example.
- first visits: bench/first_visit.lua names a new user in every request, no cookie.
- returning users: sign_in() logs USERS users in once each, as a browser would (their
  own cookies kept), and users_file() writes the (email, cookie) pairs that
  bench/users.lua spreads wrk's requests over.
- Nginx: nginx proxying the stand-in dashboard with the token written into its config,
  the reference a partner would compare the gateway against.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.common import LISTENING, free_port, start_gunicorn, wait_for

BENCH = Path(__file__).resolve().parent
TEAMS = 50
USERS = 1000
DOMAIN = "team{:02d}.acme.example"


def rules_text(teams: int = TEAMS) -> str:
    rules = ['[[subtenant]]\ntenant = "acme"\nid = "sales-us"\nname = "Sales US"\n'
             'email_domains = ["us.acme.example"]\n']
    for n in range(teams):
        rules.append(f'[[subtenant]]\ntenant = "acme"\nid = "team{n:02d}"\nname = "Team {n:02d}"\n'
                     f'email_domains = ["{DOMAIN.format(n)}"]\n')
    return "\n".join(rules)


def gateway_settings(tmp: Path, sim_url: str, key: str, secret: str, secret_key: str) -> dict[str, str]:
    """The gateway's settings for these workloads: the stand-in at ``sim_url``, these rules
    (written into ``tmp``), the host revocation store in ``tmp``, cookies over plain HTTP."""
    (tmp / "tenants.toml").write_text(rules_text())
    return {"ZIPTEAMS_API_KEY": key, "ZIPTEAMS_API_SECRET": secret, "ZIPTEAMS_API_URL": sim_url + "/api/v1",
            "ZIPTEAMS_DASHBOARD_URL": sim_url + "/dashboard/", "GATEWAY_SECRET_KEY": secret_key,
            "GATEWAY_TENANTS_FILE": str(tmp / "tenants.toml"), "GATEWAY_COOKIE_SECURE": "false",
            "GATEWAY_STATE_DIR": str(tmp / "state")}


def in_process_settings(tmp: Path, key: str, secret: str, secret_key: str) -> tuple[subprocess.Popen, dict]:
    """The stand-in under gunicorn, and the settings that run the gateway in this process against it
    (bench/profile_workloads.py, bench/log_cost.py): ``gateway_settings`` with JSON logs."""
    sim = start_gunicorn(f"gateway.sim:create_sim_app({{{key!r}: {secret!r}}})", {}, tmp / "sim.log")
    sim_url = wait_for(LISTENING, tmp / "sim.log", sim)
    return sim, {**gateway_settings(tmp, sim_url, key, secret, secret_key), "GATEWAY_LOG_FORMAT": "json"}


def stop(proc: subprocess.Popen) -> None:
    """A stand-in started by ``in_process_settings``, stopped and waited for."""
    proc.terminate()
    proc.wait(timeout=30)


def user_emails(users: int = USERS, teams: int = TEAMS) -> list[str]:
    """``users`` returning users, spread evenly over the ``teams`` subtenants."""
    return [f"user{n:04d}@{DOMAIN.format(n % teams)}" for n in range(users)]


def _cookie_header(http: requests.Session) -> str:
    return "; ".join(f"{k}={v}" for k, v in http.cookies.items())


def sign_in(url: str, emails: list[str], cookies: dict[str, str] | None = None,
            parallel: int = 8) -> dict[str, str]:
    """Each user's cookies after one visit of ``url`` + "/" (the embed page), as a browser keeps them.

    With ``cookies`` (from an earlier sign_in) each user sends theirs, and keeps whatever the
    server sets in return: the gateway rewrites a session's last-seen time once a minute, and a
    client that went on sending the old cookie would be given a new one on every request. A 503
    (the gateway's quick answer while too many first visits wait for a token) is retried.
    """
    def visit(email: str) -> tuple[str, str]:
        with requests.Session() as http:
            if cookies and cookies.get(email):
                for pair in cookies[email].split("; "):
                    name, _, value = pair.partition("=")
                    http.cookies.set(name, value)
            for _ in range(50):
                answer = http.get(url + "/", headers={"X-Forwarded-Email": email}, timeout=30)
                if answer.status_code != 503:
                    break
                time.sleep(0.2)
            if answer.status_code != 200:
                sys.exit(f"sign-in of {email} at {url} answered {answer.status_code}")
            return email, _cookie_header(http)

    with ThreadPoolExecutor(parallel) as pool:
        return dict(pool.map(visit, emails))


def users_file(path: Path, cookies: dict[str, str]) -> Path:
    path.write_text("".join(f"{email}\t{cookie}\n" for email, cookie in cookies.items()))
    return path


NGINX_CONF = """\
daemon off;
master_process on;
user root root;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {tmp}/nginx-access.log;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    keepalive_timeout 5s;
    upstream dashboard {{
        server {upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location /dashboard/ {{
            set $query "token={token}";
            if ($args) {{ set $query "token={token}&$args"; }}
            proxy_pass http://dashboard$uri?$query;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $proxy_host;
        }}
    }}
}}
"""


def start_nginx(tmp: Path, upstream: str, token: str, workers: int) -> tuple[subprocess.Popen, str] | None:
    """nginx proxying ``upstream`` (host:port) under /dashboard/, the token added to every query.

    As the gateway in the benchmark: ``workers`` processes, a socket each (reuseport), keep-alive
    connections to the dashboard (up to 32 idle per worker, the gateway's pool size), and an
    access log line per request (the gateway writes one too). None when nginx is not installed.
    """
    binary = shutil.which("nginx") or (Path("/usr/sbin/nginx").exists() and "/usr/sbin/nginx")
    if not binary:
        return None
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, tmp=tmp, upstream=upstream, port=port, token=token))
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(tmp)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "nginx-stderr.log", "wb"))
    deadline = time.monotonic() + 10
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/dashboard/api/summary", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}"
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.terminate()
            sys.exit("nginx did not start:\n" + (tmp / "nginx-stderr.log").read_text(errors="replace")
                     + (tmp / "nginx-error.log").read_text(errors="replace"))
        time.sleep(0.1)
