"""Masking of credentials before text reaches logs, errors, API answers or MQTT. Pure, no I/O.

This is the ONE redactor: every boundary (log lines, CLI errors, API answers, MQTT payloads,
stats) passes text through `mask_url` / `mask_secrets`, never an ad-hoc pattern of its own.

- URL userinfo: `scheme://user:pass@host` and `scheme://user@host` become `scheme://***@host`. The
  userinfo runs up to the LAST `@` before the host's end (`/`, `?`, `#` or a blank), the way FFmpeg
  and `urllib` split it, so a password with an unencoded `@` is masked whole.
- Query strings: EVERY value is masked (`?a=***&b=***`), not only keys that look secret: cameras and
  proxies use their own names for tokens. Bare flags without a value (go2rtc's `?video`) stay.
"""

from __future__ import annotations

import logging
import re

_MASK = "***"
# `scheme://user:pass@host` or `scheme://user@host` anywhere in a text (URLs inside error messages too).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")
# `?key=value` / `&key=value` anywhere in a text: the value runs to the next `&`, `#`, blank or
# quote (so a URL quoted in a message or in JSON does not swallow the rest of the line).
_QUERY_VALUE = re.compile(r"(?P<key>[?&][^=&#?\s]*=)[^&#\s'\"]*")
# The password part of a URL's userinfo, for `inline_password`.
_URL_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s:@]*:(?P<password>[^/?#\s]*)@")
_ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")


def mask_url(text: str) -> str:
    """Replace URL userinfo with `***@` and every query value with `***`, in a URL or any text."""
    text = _USERINFO.sub(rf"\g<scheme>{_MASK}@", text)
    return _QUERY_VALUE.sub(rf"\g<key>{_MASK}", text)


def mask_secrets(text: str, *secrets: str | None) -> str:
    """Every literal secret given (e.g. a password echoed back by a server), then mask_url.

    Literals first: a decoded password with a `/` in it would otherwise be cut by the userinfo
    pattern and its tail left visible.
    """
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return mask_url(text)


def inline_password(url: str) -> bool:
    """True when `url` (as written in a config, before `${ENV}` substitution) carries a password.

    `rtsp://user:${CAM_PASSWORD}@host` is fine; `rtsp://user:hunter2@host` and
    `rtsp://user:${CAM_PASSWORD:-hunter2}@host` (a default is written in the file too) are not.
    """
    match = _URL_PASSWORD.match(url)
    if match is None or not match.group("password"):
        return False
    return _ENV_REFERENCE.fullmatch(match.group("password")) is None


class RedactingFormatter(logging.Formatter):
    """A log formatter whose output (message, arguments and traceback) went through `mask_url`."""

    def format(self, record: logging.LogRecord) -> str:
        return mask_url(super().format(record))
