"""Masking of credentials before text reaches logs, errors, API answers or MQTT. Pure, no I/O."""

from __future__ import annotations

import re

# `scheme://user:pass@host` or `scheme://user@host` anywhere in a text (URLs inside error messages too).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s?#]+@")
# Secrets passed in a query string: ?token=..., &password=...
_SECRET_QUERY = re.compile(r"(?P<key>[?&](?:token|password|pass|pwd|secret|api_key|apikey)=)[^&#\s]*", re.I)


def mask_url(text: str) -> str:
    """Replace `user:pass@` with `***@` and secret query values with `***` in a URL or any text."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    return _SECRET_QUERY.sub(r"\g<key>***", text)


def mask_secrets(text: str, *secrets: str | None) -> str:
    """mask_url, and also every literal secret given (e.g. a password echoed back by a server)."""
    text = mask_url(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
