"""The session cookie: Flask's signed cookie, with recently verified cookies remembered.

Every request through the proxy carries the session cookie, and checking its
signature, inflating and parsing it is a noticeable share of the gateway's own
cost. A cookie string that verified moments ago verifies the same way now, so
its decoded contents are kept for a short while, keyed by the exact string.
Changing anything in the cookie changes the key, so nothing here can accept a
cookie that would not verify.
"""
from __future__ import annotations

from flask import Flask
from flask.sessions import SecureCookieSessionInterface

from gateway.memo import Memo

REMEMBER_SECONDS = 300
REMEMBER_COOKIES = 4096


def _copy(data: dict) -> dict:
    # Session values are strings, numbers and lists of strings: a shallow list copy is a deep copy.
    return {k: (list(v) if isinstance(v, list) else v) for k, v in data.items()}


class RememberingSessionInterface(SecureCookieSessionInterface):
    def __init__(self, maxsize: int = REMEMBER_COOKIES, ttl: float = REMEMBER_SECONDS):
        self._verified = Memo(maxsize, ttl)

    def open_session(self, app: Flask, request):
        value = request.cookies.get(self.get_cookie_name(app))
        if value:
            data = self._verified.get(value)
            if data is not None:
                return self.session_class(_copy(data))
        session = super().open_session(app, request)
        if value and session:
            self._verified.put(value, _copy(session))
        return session


def init_app(app: Flask) -> None:
    app.session_interface = RememberingSessionInterface()
