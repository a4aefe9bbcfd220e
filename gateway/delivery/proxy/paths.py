"""Which request paths may reach the dashboard: inside ``/dashboard/``, exactly as checked.

The check runs on the request line as sent, before any decoding, and what it
accepts is forwarded byte for byte (the HTTP client is never left to re-encode
it), so the upstream sees exactly the bytes we judged. Refused with 404:
anything that once decoded by the upstream or a front on the way could leave
the base path or name something else: dot segments in any spelling (``..``,
``%2e%2e``, ``.%2E``), ``;`` path parameters (``..;/``, ``.;``,
``;jsessionid=``) that servlet containers strip, encoded slashes and
backslashes, control characters, a lone ``%``, and characters an HTTP client
would escape.
"""
from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote_to_bytes

from gateway.errors import NotFound
from gateway.delivery.proxy.policy import BASE

# Encoded "/", "\", "%", ";", controls and DEL; raw "\", ";", controls, space and non-ASCII.
_BAD_RAW = re.compile(r"%(?:2[fF]|5[cC]|25|3[bB]|0[0-9a-fA-F]|1[0-9a-fA-F]|7[fF])|[\\;\x00-\x20\x7f-\uffff]")
_LONE_PERCENT = re.compile(r"%(?![0-9a-fA-F]{2})")
_ESCAPE = re.compile(r"%[0-9a-f]{2}|%[0-9A-F][a-f]|%[a-f][0-9A-F]")
# RFC 3986's path characters (pchar and "/") and upper-case escapes: what an HTTP client
# (urllib3 among them) sends as it is. Anything else it would percent-encode on the way.
_AS_SENT = re.compile(r"(?:[A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-F]{2})*")


def upstream_path(raw_uri: str) -> str:
    """The raw path after ``/dashboard/``, refused (404) unless it provably stays inside it."""
    path = raw_uri.split("?", 1)[0]
    if not path.startswith(BASE) or _BAD_RAW.search(path) or _LONE_PERCENT.search(path):
        raise NotFound("dashboard path refused")
    # Upper-case escapes, as an HTTP client would write them: then forwarded == checked.
    path = _ESCAPE.sub(lambda m: m.group(0).upper(), path)
    if not _AS_SENT.fullmatch(path):
        raise NotFound("dashboard path has characters a client would re-encode")
    rest = path[len(BASE):]
    try:
        decoded = unquote_to_bytes(rest).decode("utf-8")  # strict: overlong forms fail here
    except UnicodeDecodeError:
        raise NotFound("dashboard path is not valid UTF-8") from None
    if any(ord(c) < 0x20 or c in "\\;\x7f" for c in decoded):
        raise NotFound("dashboard path has control characters")
    # Fronts that normalise Unicode (NFKC: IIS, some frameworks) read "．．" as "..".
    folded = unicodedata.normalize("NFKC", decoded)
    if folded != decoded and (any(c in folded for c in "\\;%") or folded.count("/") != decoded.count("/") or
                              any(s and not s.strip(". ") for s in folded.split("/"))):
        raise NotFound("dashboard path has characters that normalise to dots or separators")
    segments = decoded.split("/")
    # "." and "..", and any all-dots segment some fronts trim to one of them ("...", ". ").
    if any(s and not s.strip(". ") for s in segments) or "" in segments[:-1]:
        raise NotFound("dashboard path has dot or empty segments")
    return rest


def raw_request_uri(request) -> str:
    env = request.environ
    raw = env.get("RAW_URI") or env.get("REQUEST_URI")
    if raw is None:
        return request.full_path
    if not raw.startswith("/"):
        # An absolute-form request line ("GET http://host/path"): never ours to forward.
        raise NotFound("absolute URL in the request line")
    return raw
