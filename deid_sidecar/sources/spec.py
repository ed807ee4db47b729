"""Turn a camera's `source` string into what PyAV opens: URL, demuxer format and options.

Forms: `go2rtc:<name>` (read from go2rtc's RTSP server), `rtsp://`, `http(s)://` (MPEG-TS, MJPEG),
`file:<path>` and `/dev/videoN` (V4L2 webcam).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from deid_sidecar.config import Go2rtcConfig
from deid_sidecar.core.redact import mask_url
from deid_sidecar.errors import UserError

#: Seconds allowed to open a source and to wait for each read before the reader reconnects.
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0


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


def parse_source(source: str, go2rtc: Go2rtcConfig, loop: bool = False) -> SourceSpec:
    rtsp_options = {"rtsp_transport": "tcp"}
    if source.startswith("go2rtc:"):
        stream = source.removeprefix("go2rtc:")
        if not stream:
            raise UserError("source 'go2rtc:' needs a stream name, e.g. go2rtc:front")
        password = go2rtc.password.get_secret_value() if go2rtc.password else None
        base = _with_credentials(go2rtc.rtsp_url.rstrip("/"), go2rtc.username, password)
        # `video` filter: only the video track; the sidecar does not forward camera audio.
        return SourceSpec("go2rtc", f"{base}/{quote(stream, safe='')}?video", "rtsp", rtsp_options)
    if source.startswith(("rtsp://", "rtsps://")):
        return SourceSpec("rtsp", source, "rtsp", rtsp_options)
    if source.startswith(("http://", "https://")):
        return SourceSpec("http", source, None, {"reconnect": "0"})
    if source.startswith("/dev/video"):
        return SourceSpec("v4l2", source, "v4l2", {})
    if source.startswith("file:"):
        path = Path(source.removeprefix("file:"))
        if not path.is_file():
            raise UserError(f"source file {path} does not exist")
        return SourceSpec("file", str(path), None, {}, loop=loop, realtime=True)
    raise UserError(
        f"source {mask_url(source)!r} is not understood: use go2rtc:<name>, rtsp://, http(s)://, "
        "file:<path> or /dev/videoN"
    )
