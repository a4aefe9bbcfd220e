"""Keeping tokens out of what the dashboard sends back: which bodies are read, and the scrubber.

Every answer is scrubbed unless its type is provably binary (images, fonts,
audio, video, PDF, archives): JSON variants, XML, CSV, event streams,
``octet-stream`` downloads and unknown types all are. A token is looked for in
every form a body can carry it in (UTF-8/ASCII, UTF-16 and UTF-32 in either
byte order), for every token this process has obtained for the subtenant and
that is still valid, not only the current one; and any other JWT whose payload
names a Zipteams tenant (a token another worker obtained, or one the dashboard
kept) is replaced too. A declared charset that could carry a token in another
form is refused (``readable_charset``).
"""
from __future__ import annotations

import base64
import json
import re

from urllib3.util.request import ACCEPT_ENCODING

from gateway.memo import Memo

# Provably binary: a token in these would be no text a page script could read as one.
BINARY_PREFIXES = ("image/", "font/", "audio/", "video/")
BINARY_TYPES = frozenset({
    "application/pdf", "application/zip", "application/gzip", "application/x-gzip", "application/x-tar",
    "application/x-7z-compressed", "application/vnd.rar", "application/x-rar-compressed",
    "application/x-bzip2", "application/x-xz", "application/zstd", "application/wasm",
    "application/vnd.ms-fontobject", "application/font-woff",
})
TEXT_IMAGES = frozenset({"image/svg+xml"})  # an image that is markup, scripts and all
# What urllib3 can decode here (brotli and zstd come with urllib3's extras).
DECODABLE = frozenset(ACCEPT_ENCODING.split(",")) | {"identity", "x-gzip"}
FORMS = ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
# Any dashboard token, also one this process never obtained (another worker's, or an older
# one the dashboard kept): a JWT whose payload names a Zipteams tenant. Bounded, so that a
# stream needs to hold back only this much to see a whole one.
JWT_MAX = 8192
_JWT = rb"eyJ[A-Za-z0-9_-]{2,4096}\.eyJ[A-Za-z0-9_-]{2,3072}\.[A-Za-z0-9_-]{0,1024}"
_JWT_TEXT = re.compile(_JWT.decode())


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_binary(content_type: str) -> bool:
    """Provably binary: exactly one media type, and one on the binary list.

    A value listing several types (``image/png, text/html``, or two Content-Type lines
    joined) is not: browsers render the last one, so it is scrubbed like text.
    """
    if "," in content_type:
        return False
    kind = media_type(content_type)
    if kind in TEXT_IMAGES:
        return False
    return kind in BINARY_TYPES or kind.startswith(BINARY_PREFIXES)


_TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
_CHARSET = re.compile(r";\s*charset\s*=\s*\"?([A-Za-z0-9._:-]+)", re.IGNORECASE)


def readable_charset(content_type: str) -> bool:
    """Whether the scrubber can find a token in a body of this declared charset.

    Any charset that writes the token's characters as their ASCII bytes (UTF-8 and the
    legacy single- and multi-byte ones browsers decode), or UTF-16/32, whose forms are
    scrubbed too. Anything else (UTF-7, EBCDIC, an unknown name) could carry the token
    in a form we would not see, so the answer is refused instead of passed on.
    """
    found = _CHARSET.search(content_type)
    if not found:
        return True
    name = found.group(1).lower().replace("_", "-")
    if name.startswith(("utf-16", "utf-32", "utf16", "utf32", "ucs-2", "ucs2")):
        return True
    try:
        return _TOKEN_ALPHABET.encode(name) == _TOKEN_ALPHABET.encode("ascii")
    except (LookupError, UnicodeError):
        return False


def encodings(content_encoding: str) -> list[str]:
    return [c.strip().lower() for c in content_encoding.split(",") if c.strip()]


def decodable(content_encoding: str) -> bool:
    return all(c in DECODABLE for c in encodings(content_encoding))


def is_dashboard_token(candidate: bytes | str) -> bool:
    """A JWT whose payload carries Zipteams' tenant claims (the spec: tenantId, subTenantId)."""
    text = candidate.decode("ascii") if isinstance(candidate, bytes) else candidate
    try:
        payload = text.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, IndexError, UnicodeError):
        return False
    return isinstance(claims, dict) and ("tenantId" in claims or "subTenantId" in claims)


class _Compiled:
    """The regex for every encoded form of some tokens (plus any dashboard JWT): compiled once
    per set of tokens, i.e. per team and token renewal, and shared by every user of the team."""

    def __init__(self, tokens: tuple[str, ...]):
        self.forms = {token.encode(form): (token, form) for token in tokens for form in FORMS}
        literals = b"|".join(re.escape(n) for n in sorted(self.forms, key=len, reverse=True))
        self.regex = re.compile(literals + b"|" + _JWT)
        # Longest tail a chunk must hold back: the start of a match that the next chunk completes.
        self.keep = max(max(len(n) for n in self.forms), JWT_MAX) - 1


class Pattern:
    """Every encoded form of some tokens, each mapped to one placeholder in the same encoding,
    and any other dashboard token in plain text, mapped to the placeholder too."""

    def __init__(self, compiled: _Compiled, placeholder: str):
        self.regex, self.keep = compiled.regex, compiled.keep
        self.table: dict[bytes, bytes] = {found: placeholder.encode(form)
                                          for found, (_, form) in compiled.forms.items()}
        self.placeholder = placeholder.encode()
        self.texts = tuple((token, placeholder) for token in dict.fromkeys(t for t, _ in compiled.forms.values()))

    def replace(self, match: re.Match) -> bytes:
        found = match.group(0)
        known = self.table.get(found)
        if known is not None:
            return known
        return self.placeholder if is_dashboard_token(found) else found

    def sub(self, data: bytes) -> bytes:
        return self.regex.sub(self.replace, data)

    def sub_text(self, value: str) -> str:
        for token, placeholder in self.texts:
            if token in value:
                value = value.replace(token, placeholder)
        if "eyJ" in value:
            value = _JWT_TEXT.sub(lambda m: self.placeholder.decode() if is_dashboard_token(m.group(0))
                                  else m.group(0), value)
        return value


_compiled = Memo(1024)
_patterns = Memo(16384)


def pattern_for(tokens: tuple[str, ...], placeholder: str) -> Pattern:
    """The pattern for a team's valid tokens and a session's placeholder: the regex is the team's."""
    return _patterns.get_or_make((tokens, placeholder), lambda: Pattern(
        _compiled.get_or_make(tokens, lambda: _Compiled(tokens)), placeholder))


class Scrubber:
    """Replaces every form of the tokens in a byte stream, also across chunk boundaries.

    Output is held back only as far as a match could still be completed by the
    next chunk, and never past a newline (no token form contains a 0x0A byte),
    so an event stream goes out event by event.
    """

    def __init__(self, pattern: Pattern):
        self.pattern = pattern
        self.tail = b""

    def feed(self, chunk: bytes) -> bytes:
        buf = self.tail + chunk if self.tail else chunk
        safe = max(len(buf) - self.pattern.keep, buf.rfind(b"\n") + 1)
        pieces, pos = [], 0
        for m in self.pattern.regex.finditer(buf):
            if m.start() >= safe:
                break  # might be a prefix of something longer: decide with the next chunk
            pieces.append(buf[pos:m.start()])
            pieces.append(self.pattern.replace(m))
            pos = m.end()
        cut = max(pos, safe)
        pieces.append(buf[pos:cut])
        self.tail = buf[cut:]
        return b"".join(pieces)

    def finish(self) -> bytes:
        tail, self.tail = self.tail, b""
        return self.pattern.sub(tail)
