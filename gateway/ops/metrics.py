"""Prometheus metrics, correct under gunicorn's several worker processes.

gunicorn.conf.py points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory
before the app is loaded; each worker then writes its samples there and a
scrape of ``/metrics`` adds them up, exited workers' counters included. Outside
gunicorn (tests, the demo) the process's own registry is served.
"""
from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter("gateway_requests_total", "HTTP requests answered, by route and status.",
                   ["route", "status"])
REQUEST_SECONDS = Histogram("gateway_request_seconds", "Time to answer a request (until the body starts).",
                            ["route"], buckets=LATENCY_BUCKETS)
TOKEN_CACHE = Counter("gateway_token_cache_total",
                      "Token cache look-ups and refreshes: hit, miss, refresh, refresh_failure, shared_hit.",
                      ["result"])
TOKEN_CACHE_HIT = TOKEN_CACHE.labels("hit")  # the hot one, looked up once
ZIPTEAMS_CALLS = Counter("gateway_zipteams_requests_total",
                         "Token requests sent to Zipteams, by outcome.", ["outcome"])
ZIPTEAMS_SECONDS = Histogram("gateway_zipteams_request_seconds", "Token request latency.",
                             buckets=LATENCY_BUCKETS)
ZIPTEAMS_REFUSED = Counter("gateway_zipteams_refused_total",
                           "Token requests not sent, to protect Zipteams (rate_limit, backoff, breaker) or "
                           "our threads (threads: too many already waiting for Zipteams).",
                           ["reason"])
ZIPTEAMS_CONFIG_ERRORS = Counter("gateway_zipteams_config_errors_total",
                                 "Token requests Zipteams refused for a configuration reason (400, 403, a token "
                                 "for another subtenant), by code: never counted as an outage.", ["code"])
STATE_UNAVAILABLE = Counter("gateway_state_unavailable_total",
                            "Revocation or single-use checks answered without the shared store, by use.", ["use"])
LOG_LINES_DROPPED = Counter("gateway_log_lines_dropped_total",
                            "Log lines lost because the log queue was full or writing to stdout failed.")
# One breaker per worker process: the instance shows its worst live one (open if any worker's is).
BREAKER_STATE = Gauge("gateway_breaker_state", "Circuit breaker toward Zipteams: 0 closed, 1 half-open, 2 open.",
                      multiprocess_mode="livemax")
REDIS_ERRORS = Counter("gateway_redis_errors_total", "Failed calls to the shared Redis cache.")
# Each worker says what its last call to the shared tier found; the instance shows the worst live one.
# Labelled, so a process that never called Redis (gunicorn's master) has no value: an unlabelled
# gauge would hold 0 in every process and livemin would always say unhealthy.
SHARED_TIER_HEALTHY = Gauge("gateway_shared_tier_healthy",
                            "1 while the shared Redis tier (GATEWAY_CACHE_URL) answers, 0 while the gateway falls "
                            "back without it, by mode (plain, TLS, Sentinel, Cluster); absent with memory:// "
                            "or before the first call.", ["mode"], multiprocess_mode="livemin")
CLIENTS_READING = Gauge("gateway_clients_reading", "Requests whose body is still arriving, read before the request "
                        "takes one of the worker's places (gateway/serving/admission.py).", multiprocess_mode="livesum")
BODIES_REFUSED = Counter("gateway_bodies_refused_total",
                         "Requests answered 503 because their worker already held GATEWAY_BODY_BUFFER bytes of bodies.")
CLIENTS_TIMED_OUT = Counter("gateway_clients_timed_out_total",
                            "Requests answered 408 because their body was not complete within GATEWAY_BODY_TIMEOUT.")
DOWNLOADS_REFUSED = Counter("gateway_downloads_refused_total",
                            "Long dashboard answers refused with 503 because the worker's or the user's share "
                            "of download threads was in use, by limit.", ["limit"])
RULES_RELOADS = Counter("gateway_rules_reloads_total", "Tenant file reloads, by result.", ["result"])


_children: dict = {}


def count_request(route: str, status: int, seconds: float) -> None:
    """Count one answered request; the labelled children are looked up once each."""
    key = (route, status)
    pair = _children.get(key)
    if pair is None:
        pair = _children[key] = (REQUESTS.labels(route, str(status)), REQUEST_SECONDS.labels(route))
    pair[0].inc()
    pair[1].observe(seconds)


def render() -> tuple[bytes, str]:
    """The exposition text for a scrape, and its content type."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        try:
            return generate_latest(registry), CONTENT_TYPE_LATEST
        except FileNotFoundError:
            # A dead worker's live gauge file was removed between listing and reading.
            return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def retire_process(pid: int, path: str) -> None:
    """In gunicorn's master when a worker has exited: its live gauges go (prometheus_client's
    ``multiprocess.mark_process_dead``). Its counter and histogram files stay where they are and
    are still added up, so totals never go backwards; the directory grows by those two files
    per exited worker until the master exits (gunicorn.conf.py)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)
