"""What the event loop knows of a request still arriving: is it complete enough for a thread?

``Incoming`` is a pure reader fed bytes by ``GatewayWorker`` (gateway/serving/worker.py): it
finds the end of the head, decides how much body to wait for (a Content-Length body up to
``PREREAD_BODY``, or chunks up to the same total) and says when a thread could serve the
request without waiting on the client. The canned answers are what the event loop sends
itself, before any thread or parser is involved.
"""
from __future__ import annotations

import re

PREREAD_BODY = 1024 * 1024       # bodies up to this size are read before a thread is given the request
PREREAD_TOTAL = 32 * 1024 * 1024  # bytes held for unfinished requests per worker, at most
HEAD_LIMIT = 64 * 1024           # past this without an end of head: 431 from the event loop
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
HEAD_TOO_LARGE_ANSWER = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
BUSY_ANSWER = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
MORE, READY, HEAD_TOO_LARGE = "more", "ready", "head too large"


class Incoming:
    """One request's bytes as they arrive, and whether a thread could serve it without waiting.

    Deliberately strict: anything this reading does not fully understand (bare LF line ends,
    odd header names, a transfer coding other than exactly ``chunked``, a bad chunk size) is
    handed at once to gunicorn's parser, which answers it (400, 501...) without waiting.
    """

    __slots__ = ("buf", "deadline", "head_end", "need", "chunk_at", "body_deadline", "send_continue")

    def __init__(self, deadline: float):
        self.buf = bytearray()
        self.deadline = deadline
        self.head_end = -1
        self.need: int | None = None   # total bytes of a request with a Content-Length body
        self.chunk_at = -1             # where the next chunk-size line starts (chunked bodies)
        self.body_deadline = 0.0
        self.send_continue = False     # Expect: 100-continue: answer 100 now, then read the body here

    def feed(self, data: bytes, now: float, body_timeout: float) -> str:
        """Add bytes; READY once a thread can serve the request without waiting, MORE to keep
        reading, HEAD_TOO_LARGE for a head past the limit with no end in sight."""
        self.buf += data
        if self.head_end < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if self.buf.find(b"\n\n") >= 0 or self.buf.find(b"\n\r\n") >= 0:
                    return READY  # bare LF line ends: the parser refuses them at once
                return HEAD_TOO_LARGE if len(self.buf) > HEAD_LIMIT else MORE
            self.head_end = end + 4
            self.body_deadline = now + body_timeout
            if not self._plan_body():
                return READY
        if self.need is not None:
            return READY if len(self.buf) >= self.need else MORE
        if self.chunk_at >= 0:
            return READY if self._chunks_complete() else MORE
        return READY

    def _plan_body(self) -> bool:
        """Decide how much body to wait for; False when the thread should read (or refuse) it itself."""
        length, chunked, expect = None, False, False
        for line in bytes(self.buf[:self.head_end - 4]).split(b"\r\n")[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not re.fullmatch(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                return False  # not a well-formed field: the parser's 400
            name, value = name.lower(), value.strip().lower()
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return False
                length = int(value)
            elif name == b"transfer-encoding":
                if value != b"chunked":
                    return False  # anything else is the parser's to refuse (501, 400)
                chunked = True
            elif name == b"expect":
                if value != b"100-continue":
                    return False
                expect = True
        if chunked and length is None:
            self.chunk_at = self.head_end
        elif chunked or length is None or length == 0 or length > PREREAD_BODY:
            return False
        else:
            self.need = self.head_end + length
        self.send_continue = expect
        return True

    def _chunks_complete(self) -> bool:
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n", self.chunk_at)
            if eol < 0:
                return len(buf) - self.chunk_at > 1024 or len(buf) - self.head_end > PREREAD_BODY
            size_text = bytes(buf[self.chunk_at:eol]).split(b";", 1)[0].strip()
            if not _HEX.fullmatch(size_text):
                return True  # malformed (a sign, 0x, _): gunicorn's parser gives the 400
            size = int(size_text, 16)
            if size == 0:
                # Trailer fields, then an empty line.
                return buf.find(b"\r\n\r\n", eol) >= 0 or buf.startswith(b"\r\n", eol + 2)
            if size > PREREAD_BODY:
                return True  # the thread reads it (under the client timeout), or the parser refuses it
            self.chunk_at = eol + 2 + size + 2
            if self.chunk_at > len(buf):
                return self.chunk_at - self.head_end > PREREAD_BODY
            if buf[self.chunk_at - 2:self.chunk_at] != b"\r\n":
                return True
