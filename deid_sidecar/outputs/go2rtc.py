"""Keep the anonymized streams registered in go2rtc, and print the YAML users add by hand.

Runtime registrations vanish when Frigate restarts its go2rtc, so `Registrar` polls and re-PUTs what
is missing. Its list of wanted streams changes while it runs: cameras added in the web UI are
registered like the configured ones, and removed ones are deleted again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml

from deid_sidecar.config import Config, output_name
from deid_sidecar.core.redact import mask_secrets
from deid_sidecar.outputs.go2rtc_api import Go2rtcError, Go2rtcUnreachable, StreamApi, client_for
from deid_sidecar.outputs.retry import RetryLoop

log = logging.getLogger(__name__)

#: A wanted stream's registration, as `Registrar.on_state` reports it (and /api/stats and MQTT show it).
STREAM_STATES = ("registering", "registered", "not_persisted", "refused", "unreachable")
StreamStateCallback = Callable[[str, str], None]


def producer_urls(stream: Any) -> list[str] | None:
    """Source URLs of a stream from `GET /api/streams`; None when go2rtc did not say."""
    if not isinstance(stream, dict):
        return None
    producers = stream.get("producers") or []
    urls = [p.get("url") for p in producers if isinstance(p, dict)]
    if not urls or any(not isinstance(u, str) for u in urls):
        return None
    return [u for u in urls if isinstance(u, str)]


def needs_put(current: Any, wanted: Sequence[str]) -> bool:
    """Re-PUT only what is missing or clearly different: a PUT replaces the stream and its viewers."""
    if current is None:
        return True
    urls = producer_urls(current)
    if urls is None:  # a running producer may not report its url: trust the stream exists
        return False
    return sorted(urls) != sorted(wanted)


@dataclass
class RegistrarStatus:
    last_ok: float | None = None  # wall-clock time of the last successful check
    last_error: str = ""  # masked
    registered: set[str] = field(default_factory=set)
    persisted: bool = True
    puts: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "last_ok": self.last_ok,
            "last_error": self.last_error,
            "registered": sorted(self.registered),
            "persisted": self.persisted,
            "puts": self.puts,
        }


class Registrar(RetryLoop):
    """Registers every wanted stream, then re-checks every `interval_s` and repairs what is missing."""

    def __init__(
        self,
        client: StreamApi,
        wanted: Mapping[str, Sequence[str]],
        interval_s: float,
        secrets: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.client = client
        self.wanted = {name: list(sources) for name, sources in wanted.items()}
        self.interval_s = interval_s
        # The registered sources carry server.stream_token: an error that echoes one masks it in any form.
        self._secrets = tuple(secrets)
        self.status = RegistrarStatus()
        #: Told (stream name, state) whenever a wanted stream's registration changes state.
        self.on_state: StreamStateCallback | None = None
        self._states: dict[str, str] = {}

    def add(self, name: str, sources: Sequence[str]) -> None:
        """Register `name` too (a camera added at runtime), at once rather than at the next check."""
        self.wanted[name] = list(sources)
        self._set_state(name, "registering")
        self.wake()

    async def remove(self, name: str) -> None:
        """Stop registering `name` and delete it from go2rtc if this registrar put it there."""
        self.wanted.pop(name, None)
        self._states.pop(name, None)
        await self._delete(name)

    async def reconcile(self) -> list[str]:
        """One pass: PUT every wanted stream that go2rtc lacks or has with other sources.

        A stream go2rtc refuses does not hold up the others; the first refusal is raised at the end.
        """
        current = await self.client.list_streams()
        changed, refused = [], []
        for name, sources in list(self.wanted.items()):  # add/remove may run while we await
            if needs_put(current.get(name), sources):
                try:
                    result = await self.client.put_stream(name, sources)
                except Go2rtcUnreachable:
                    raise
                except Go2rtcError as exc:
                    self._set_state(name, "refused")
                    refused.append(exc)
                    continue
                self.status.puts += 1
                self.status.persisted = result == "saved"
                self._set_state(name, "registered" if result == "saved" else "not_persisted")
                changed.append(name)
            elif self._states.get(name) != "not_persisted":  # that one stays known as such
                self._set_state(name, "registered")  # already there with exactly our source
            # Ours now (PUT by us, or already carrying exactly our source): close(remove) may delete it.
            self.status.registered.add(name)
            if name not in self.wanted:  # removed during the PUT: take it back out
                await self._delete(name)
        if refused:
            raise refused[0]
        return changed

    def _set_state(self, name: str, state: str) -> None:
        if name not in self.wanted or self._states.get(name) == state:
            return
        self._states[name] = state
        if self.on_state is not None:
            self.on_state(name, state)

    async def attempt(self) -> float:
        """One reconcile; never raises for go2rtc trouble."""
        try:
            changed = await self.reconcile()
        except Go2rtcUnreachable as exc:
            for name in list(self.wanted):
                self._set_state(name, "unreachable")
            delay = self.failed(settle_s=self.interval_s)
            self._record_error(str(exc), logging.WARNING if self.worth_logging else logging.DEBUG)
            return delay
        except Go2rtcError as exc:  # refused: retrying sooner would not help
            self.succeeded()
            self._record_error(str(exc), logging.ERROR)
            return self.interval_s
        self.succeeded()
        self._record_ok(changed)
        return self.interval_s

    def _record_ok(self, changed: list[str]) -> None:
        if changed:
            log.info("go2rtc %s: registered %s", self.client.describe, ", ".join(changed))
        self.status.last_ok = time.time()
        self.status.last_error = ""

    def _record_error(self, message: str, level: int) -> None:
        self.status.last_error = self._mask(message)
        log.log(level, "go2rtc registration: %s", self.status.last_error)

    def _mask(self, text: str) -> str:
        return mask_secrets(text, *self._secrets)

    async def _delete(self, name: str) -> None:
        if name not in self.status.registered:
            return
        try:
            await self.client.delete_stream(name)
        except Go2rtcError as exc:
            log.warning("go2rtc: could not remove %s: %s", name, self._mask(str(exc)))
        else:
            self.status.registered.discard(name)
            log.info("go2rtc %s: removed %s", self.client.describe, name)

    async def close(self, remove: bool) -> None:
        """Stop the loop; with `remove`, DELETE the streams this registrar created."""
        self.stop()
        if remove:
            for name in sorted(self.status.registered):
                await self._delete(name)


# --- from the config --------------------------------------------------------------------------


def stream_url(config: Config, output: str, token: str | None = None) -> str:
    """URL go2rtc reads an output from: `<sidecar_url>/streams/<output>.ts[?token=...]`."""
    url = f"{config.go2rtc.sidecar_url.rstrip('/')}/streams/{output}.ts"
    if token is None and config.server.stream_token is not None:
        token = config.server.stream_token.get_secret_value()
    return url + (f"?token={quote(token, safe='')}" if token else "")


def registration_sources(config: Config) -> dict[str, list[str]]:
    """Output stream name -> the sources to register, for every enabled camera."""
    return {
        (out := output_name(cam_name, cam)): [stream_url(config, out)]
        for cam_name, cam in config.cameras.items()
        if cam.enabled
    }


def registrar_for(
    config: Config, session: aiohttp.ClientSession, wanted: Mapping[str, Sequence[str]] | None = None
) -> Registrar:
    """The registrar of `config`'s go2rtc, for `wanted` (default: the config's enabled cameras)."""
    token = config.server.stream_token.get_secret_value() if config.server.stream_token else ""
    secrets = (token, quote(token, safe="")) if token else ()
    sources = registration_sources(config) if wanted is None else wanted
    return Registrar(client_for(config, session), sources, config.go2rtc.reconcile_s, secrets)


# --- YAML for users ---------------------------------------------------------------------------

# References, not secrets: the snippets never contain the token itself.
GO2RTC_TOKEN_REF = "${DEID_STREAM_TOKEN}"  # noqa: S105 (go2rtc expands ${VAR} from its environment)
FRIGATE_TOKEN_REF = "{FRIGATE_DEID_STREAM_TOKEN}"  # noqa: S105 (Frigate fills FRIGATE_* in go2rtc streams)


def _dump(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=200)


def _snippet_sources(config: Config, token_ref: str | None) -> dict[str, str]:
    base = config.go2rtc.sidecar_url.rstrip("/")
    query = f"?token={token_ref}" if token_ref else ""
    cams = {name: cam for name, cam in config.cameras.items() if cam.enabled}
    return {(out := output_name(name, cam)): f"{base}/streams/{out}.ts{query}" for name, cam in cams.items()}


#: What `go2rtc-yaml` can print: each is ONE file, valid when pasted whole (no key twice).
YAML_TARGETS = ("go2rtc", "frigate")


def render_yaml_snippets(config: Config, target: str = "go2rtc") -> str:
    """The YAML to add for the outputs: `go2rtc` (go2rtc.yaml's `streams:`) or `frigate` (Frigate's
    config: its go2rtc streams and each camera's live view and record/detect input, in one `cameras:`).
    The stream token appears as an environment reference only."""
    if target not in YAML_TARGETS:
        raise ValueError(f"target must be one of {', '.join(YAML_TARGETS)}")
    token = config.server.stream_token is not None
    header = [
        f"# deid-sidecar: anonymized streams for {'go2rtc (go2rtc.yaml)' if target == 'go2rtc' else 'Frigate'}.",
        "# Each camera's anonymized stream has its OWN name: never add it as a second source of the raw stream.",
    ]
    if target == "go2rtc":
        if token:
            header.append(
                "# The stream URLs need server.stream_token: set DEID_STREAM_TOKEN in go2rtc's environment."
            )
        body = _dump({"streams": _snippet_sources(config, GO2RTC_TOKEN_REF if token else None)})
    else:
        if token:
            header.append(
                "# The stream URLs need server.stream_token: set FRIGATE_DEID_STREAM_TOKEN in Frigate's environment."
            )
        header += [
            "# Merge into Frigate's config: `go2rtc: streams:` holds ONLY the anonymized streams, and each camera",
            "# records, detects and shows the anonymized restream, so Frigate never holds the raw feed.",
        ]
        body = _dump(_frigate_config(config, FRIGATE_TOKEN_REF if token else None))
    return "\n".join([*header, "", body])


def _frigate_config(config: Config, token_ref: str | None) -> dict[str, Any]:
    outputs = {name: output_name(name, cam) for name, cam in config.cameras.items() if cam.enabled}
    restream = {"input_args": "preset-rtsp-restream", "roles": ["record", "detect"]}
    return {
        "go2rtc": {"streams": _snippet_sources(config, token_ref)},
        "cameras": {
            cam: {
                "ffmpeg": {"inputs": [{"path": f"rtsp://127.0.0.1:8554/{out}", **restream}]},
                # The first entry is the dashboard's default stream.
                "live": {"streams": {"Anonymized": out}},
            }
            for cam, out in outputs.items()
        },
    }
