"""Turn a camera's `source` string into what PyAV opens: URL, demuxer format and options.

Forms: `go2rtc:<name>` (read from go2rtc's RTSP server), `rtsp://`, `http(s)://` (MPEG-TS, MJPEG),
`file:<path>` and `/dev/videoN` (V4L2 webcam).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import SecretStr

from deid_sidecar.core.redact import mask_url
from deid_sidecar.errors import UserError

#: Seconds allowed to open a source and to wait for each read before the reader reconnects.
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0


SOURCE_FORMS = "go2rtc:<name>, rtsp://, rtsps://, http://, https://, file:<path> or /dev/videoN"
_URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
_V4L2 = re.compile(r"/dev/video[0-9]+")


def source_form_error(source: str) -> str | None:
    """Why `source` is not one of the accepted forms, or None. Pure: no file or network is touched.

    The message shows the source with its credentials masked.
    """
    if not source.strip():
        return "must not be empty: use " + SOURCE_FORMS
    if source != source.strip() or not source.isprintable():
        return f"{mask_url(source)!r} starts or ends with a blank, or contains a control character"
    if source.startswith("go2rtc:"):
        return None if source.removeprefix("go2rtc:") else "'go2rtc:' needs a stream name, e.g. go2rtc:front"
    if source.startswith(_URL_SCHEMES):
        if any(c.isspace() for c in source):
            return f"{mask_url(source)!r} contains a blank (write it as %20)"
        try:
            parts = urlsplit(source)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            # Not echoed: a password with an unencoded '/' or '#' is read as the port, and masking
            # cannot tell where such a password ends.
            scheme = source.split("://", 1)[0]
            return (
                f"this {scheme}:// URL is not valid: its host or port cannot be read (in a password, "
                "write / ? # @ : as %2F %3F %23 %40 %3A)"
            )
        return None if parts.hostname else f"{mask_url(source)!r} has no host"
    if source.startswith("file:"):
        return None if source.removeprefix("file:") else "'file:' needs a path, e.g. file:/media/clip.mp4"
    if _V4L2.fullmatch(source):
        return None
    return f"{mask_url(source)!r} is not understood: use {SOURCE_FORMS}"


def stream_name(source: str) -> str | None:
    """The stream name a source is known by: `go2rtc:front` and `rtsp://go2rtc:8554/front` -> `front`.

    An anonymized output must never take such a name (a raw and an anonymized stream would share it).
    Other forms have no stream name (None).
    """
    if source.startswith("go2rtc:"):
        return source.removeprefix("go2rtc:") or None
    if source.startswith(("rtsp://", "rtsps://")):
        try:
            segments = [s for s in urlsplit(source).path.split("/") if s]
        except ValueError:
            return None
        return unquote(segments[-1]) if segments else None
    return None


def file_source_error(source: str) -> str | None:
    """For a `file:` source: why it cannot be read (this touches the file system), or None."""
    if not source.startswith("file:"):
        return None
    path = Path(source.removeprefix("file:"))
    return None if path.is_file() else f"file {path} does not exist"


class Go2rtcAccess(Protocol):
    """How `go2rtc:` sources are read: `config.Go2rtcConfig` is one.

    Declared here, not imported: config.py validates sources with the functions above, so this
    module stays below it.
    """

    @property
    def rtsp_url(self) -> str: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> SecretStr | None: ...


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # go2rtc | rtsp | http | file | v4l2
    url: str
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    loop: bool = False
    realtime: bool = False  # pace a file at its own frame rate, as a camera would deliver it

    @property
    def display(self) -> str:
        """The URL with credentials masked: the only form that may reach logs, errors and the API."""
        return mask_url(self.url)

    @property
    def is_live(self) -> bool:
        return self.kind != "file"


def _with_credentials(url: str, username: str | None, password: str | None) -> str:
    if not username:
        return url
    parts = urlsplit(url)
    auth = quote(username, safe="")
    if password:
        auth += ":" + quote(password, safe="")
    return urlunsplit(
        parts._replace(netloc=f"{auth}@{parts.hostname}" + (f":{parts.port}" if parts.port else ""))
    )


def parse_source(source: str, go2rtc: Go2rtcAccess, loop: bool = False) -> SourceSpec:
    problem = source_form_error(source) or file_source_error(source)
    if problem is not None:
        raise UserError(f"source {problem}")
    rtsp_options = {"rtsp_transport": "tcp"}
    if source.startswith("go2rtc:"):
        stream = source.removeprefix("go2rtc:")
        password = go2rtc.password.get_secret_value() if go2rtc.password else None
        base = _with_credentials(go2rtc.rtsp_url.rstrip("/"), go2rtc.username, password)
        # `video` filter: only the video track; the sidecar does not forward camera audio.
        return SourceSpec("go2rtc", f"{base}/{quote(stream, safe='')}?video", "rtsp", rtsp_options)
    if source.startswith(("rtsp://", "rtsps://")):
        return SourceSpec("rtsp", source, "rtsp", rtsp_options)
    if source.startswith(("http://", "https://")):
        return SourceSpec("http", source, None, {"reconnect": "0"})
    if source.startswith("file:"):
        return SourceSpec("file", str(Path(source.removeprefix("file:"))), None, {}, loop=loop, realtime=True)
    return SourceSpec("v4l2", source, "v4l2", {})
