"""Where a redirect may send the browser after sign-in or an error: our own paths only."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

# Percent-encoded controls, DEL and backslash: harmless to a browser, but not to
# every proxy or framework that might decode the target on the way.
_ENCODED_TRICK = re.compile(r"%(?:[01][0-9a-fA-F]|7[fF]|5[cC])")


def safe_next(target: str | None) -> str:
    """``target`` if it is a same-origin relative path, else ``/``.

    Browsers read ``\\`` as ``/`` and drop tabs and newlines, so ``/\\evil.com``
    or ``/\\t/evil.com`` would leave the site: only a single leading slash
    followed by a safe character is accepted.
    """
    if not target or not isinstance(target, str):
        return "/"
    # Only visible ASCII: browsers strip or reinterpret whitespace, controls and
    # backslashes, and our own paths never need anything else.
    if any(not 0x21 <= ord(c) <= 0x7e or c == "\\" for c in target) or _ENCODED_TRICK.search(target):
        return "/"
    if not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    if target.endswith("?"):
        target = target[:-1]
    return target
