"""Keeping tokens out of what the dashboard sends back: which bodies are read, and the scrubber.

Every answer is scrubbed unless its type is provably binary (images, fonts,
audio, video, PDF, archives): JSON variants, XML, CSV, event streams,
``octet-stream`` downloads and unknown types all are. A token is looked for in
every form a body can carry it in (UTF-8/ASCII, UTF-16 in either byte order),
and for every token this gateway has obtained for the subtenant and that is
still valid, not only the current one.
"""
from __future__ import annotations

import re

from urllib3.util.request import ACCEPT_ENCODING

from ..memo import Memo

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
FORMS = ("utf-8", "utf-16-le", "utf-16-be")


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_binary(content_type: str) -> bool:
    kind = media_type(content_type)
    if kind in TEXT_IMAGES:
        return False
    return kind in BINARY_TYPES or kind.startswith(BINARY_PREFIXES)


def encodings(content_encoding: str) -> list[str]:
    return [c.strip().lower() for c in content_encoding.split(",") if c.strip()]


def decodable(content_encoding: str) -> bool:
    return all(c in DECODABLE for c in encodings(content_encoding))


class Pattern:
    """Every encoded form of some tokens, each mapped to its placeholder in the same encoding."""

    def __init__(self, replacements: dict[str, str]):
        self.table: dict[bytes, bytes] = {}
        for token, placeholder in replacements.items():
            for form in FORMS:
                self.table[token.encode(form)] = placeholder.encode(form)
        self.regex = re.compile(b"|".join(re.escape(n) for n in sorted(self.table, key=len, reverse=True)))
        # Longest tail a chunk must hold back: the start of a match that the next chunk completes.
        self.keep = max(len(n) for n in self.table) - 1
        self.texts = tuple(replacements.items())

    def sub(self, data: bytes) -> bytes:
        return self.regex.sub(lambda m: self.table[m.group(0)], data)

    def sub_text(self, value: str) -> str:
        for token, placeholder in self.texts:
            if token in value:
                value = value.replace(token, placeholder)
        return value


_patterns = Memo(4096)


def pattern_for(tokens: tuple[str, ...], placeholder: str) -> Pattern:
    """One compiled pattern per set of tokens and placeholder: many requests share it."""
    key = (tokens, placeholder)
    found = _patterns.get(key)
    if found is None:
        found = Pattern({t: placeholder for t in tokens})
        _patterns.put(key, found)
    return found


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
            pieces.append(self.pattern.table[m.group(0)])
            pos = m.end()
        cut = max(pos, safe)
        pieces.append(buf[pos:cut])
        self.tail = buf[cut:]
        return b"".join(pieces)

    def finish(self) -> bytes:
        tail, self.tail = self.tail, b""
        return self.pattern.sub(tail)
