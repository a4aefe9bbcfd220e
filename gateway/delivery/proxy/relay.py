"""The dashboard's answer on its way to the browser: headers and body, every token scrubbed.

A short answer of known length is read whole and sent with its length; anything else
streams as it arrives (``read1``: an event stream is not held back), through a
``scrub.Scrubber`` unless it is binary. The upstream connection goes back to the pool
only when its body was read to the end.
"""
from __future__ import annotations

import logging
from typing import Iterator

from urllib3.exceptions import HTTPError as Urllib3Error

from gateway import bounded
from gateway.errors import UpstreamFailure, UpstreamTimeout
from gateway.delivery.proxy import policy, scrub
from gateway.delivery.proxy.upstream import CHUNK, DashboardProxy

logger = logging.getLogger(__name__)

SMALL_BODY = 256 * 1024  # answers up to this size are sent whole, with a Content-Length


def answer_headers(raw_headers, proxy: DashboardProxy, pattern: scrub.Pattern, *, decoded: bool):
    return policy.response_headers(raw_headers, pattern=pattern, upstream_origin=proxy.upstream_origin,
                                   upstream_base_path=proxy.upstream_base_path,
                                   decoded=decoded) + proxy.frame_headers


def _chunks(upstream, decode: bool) -> Iterator[bytes]:
    # read1: whatever has arrived goes on at once (an event stream is not held for 64 KB).
    while data := upstream.read1(CHUNK, decode_content=decode):
        yield data


def body_stream(upstream, pattern: scrub.Pattern | None) -> Iterator[bytes]:
    """The upstream body in chunks, tokens replaced; the connection is reused only if read to the end."""
    complete = False
    try:
        if pattern is None:
            yield from _chunks(upstream, False)
        else:
            scrubber = scrub.Scrubber(pattern)
            for chunk in _chunks(upstream, True):
                out = scrubber.feed(chunk)
                if out:
                    yield out
            tail = scrubber.finish()
            if tail:
                yield tail
        complete = True
    except (Urllib3Error, OSError) as exc:
        # Headers are already sent: all we can do is end the stream early (a body we
        # could not decode is never passed on), and say so.
        logger.warning("dashboard stream broke off (%s)", type(exc).__name__)
    finally:
        if not complete:
            upstream.close()
        upstream.release_conn()


def small_body(upstream, pattern: scrub.Pattern, proxy: DashboardProxy) -> bytes | None:
    """The whole body when it is short and its length known: one write, no chunking."""
    length = upstream.headers.get("Content-Length", "")
    if not length.isdigit() or int(length) > SMALL_BODY:
        return None
    try:
        # Read whole, so bounded in all (under gevent): a trickle restarts each read's time-out.
        with bounded.limit(proxy.timeout, proxy.gevent_server):
            data = upstream.read(decode_content=True)
    except bounded.TimedOut:
        upstream.close()
        raise UpstreamTimeout(f"dashboard's answer not complete within {proxy.timeout:g} s in all") from None
    except (Urllib3Error, OSError) as exc:
        upstream.close()
        raise UpstreamFailure(f"dashboard answer broke off or could not be decoded ({type(exc).__name__})") from None
    finally:
        upstream.release_conn()
    return pattern.sub(data)
