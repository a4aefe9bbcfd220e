"""One preflight result as one line: what was checked, and on failure the setting, the URL tried and the fix."""
from __future__ import annotations

from dataclasses import dataclass

from gateway.config import redact_url


@dataclass(frozen=True)
class Finding:
    what: str            # the hop checked, e.g. "Zipteams token API"
    ok: bool
    text: str            # ok: "ok (...)"; failed: what happened
    setting: str = ""    # the setting to change
    url: str = ""        # the URL tried (shown without user-info)
    fix: str = ""        # the likely fix, in words
    label: str = "FAILED"

    def line(self) -> str:
        if self.ok:
            return f"{self.what}: {self.text}"
        where = f" (tried {redact_url(self.url)})" if self.url else ""
        setting = f"{self.setting}: " if self.setting else ""
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.what}: {self.label}: {setting}{self.text}{where}{fix}"
