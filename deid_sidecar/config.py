"""Configuration: pydantic v2 models, the one source of truth for every option.

`docs/config.md` is generated from these models (`deid-sidecar config-docs`); CI checks it is current.
Loading has no side effects: it reads YAML, substitutes `${ENV}` references and validates. Loading is
bounded (file size, nesting depth, values after YAML aliases are expanded) so that no file, however
crafted, ends in a traceback or takes long to refuse. Checks that need the file system (does a
`file:` source exist?) are in `preflight`, which `check-config` and `run` both call.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from deid_sidecar.core.redact import inline_password, mask_url
from deid_sidecar.errors import ConfigError
from deid_sidecar.sources.spec import file_source_error, source_form_error, stream_name

log = logging.getLogger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

# Bounds shared by the config file and every runtime change (web API, MQTT): one definition, so a
# value the config would refuse can never reach a camera another way.
MIN_OUTPUT_FPS = 1.0
MAX_OUTPUT_FPS = 60.0
MIN_OUTPUT_HEIGHT = 90
MAX_OUTPUT_HEIGHT = 2160
#: Shortest accepted `server.token` / `server.stream_token`: a short token can be guessed.
MIN_TOKEN_LENGTH = 16

# Limits of a config FILE: anything beyond them is refused with a message, before validation.
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_DEPTH = 32
#: Values (mappings, lists, scalars) the document may hold once its aliases are expanded: far above
#: any real config, far below an alias bomb ("billion laughs"), which expands exponentially.
MAX_YAML_NODES = 100_000


class Strict(BaseModel):
    # inf and NaN pass some bounds checks (and NaN fails every comparison): refused everywhere.
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class Method(str, Enum):
    BLUR = "blur"
    PIXELATE = "pixelate"
    FILL = "fill"
    #: Synthetic faces and plates (deid_sidecar/anonymize/replace.py); blur/fill where that fails.
    REPLACE = "replace"


class WholeFrameMask(str, Enum):
    """How a frame is hidden when detection cannot vouch for it."""

    BLUR = "blur"
    PIXELATE = "pixelate"
    BLACK = "black"


class FailMode(str, Enum):
    MASK = "mask"
    HOLD = "hold"


class DetectorConfig(Strict):
    enabled: bool = Field(True, description="Run this detector.")
    model: str = Field(description="Model id from `deid-sidecar models list`.")
    threshold: float = Field(
        0.3,
        ge=0.01,
        le=1.0,
        description="Score above which a box is MASKED. Keep it low: a missed face is a leak.",
    )
    event_threshold: float = Field(
        0.5, ge=0.01, le=1.0, description="Score above which an object is reported in events and counts."
    )
    input_width: int = Field(
        640, ge=128, le=3840, description="Long side the frame is resized to before inference (pixels)."
    )
    file_input_width: int | None = Field(
        None,
        ge=128,
        le=3840,
        description="Long side for inference in file mode, where small objects matter more than speed "
        "(default: input_width).",
    )
    file_every_pass: int = Field(
        1,
        ge=1,
        le=10,
        description="File mode: run this detector on every Nth detection pass only; the tracker and the "
        "look-ahead cover the passes between (for large, slow objects such as plates).",
    )

    zoom_threshold: float | None = Field(
        None,
        ge=0.01,
        le=1.0,
        description="Small candidates scoring at least this, but under `threshold`, get a second look on a "
        "crop zoomed 2-4x and are masked when that look is sure (null: off). Finds faces too small for "
        "`input_width` at ~2 ms a candidate.",
    )
    zoom_below_px: int = Field(
        40,
        ge=4,
        le=400,
        description="Only candidates whose long side is under this many frame pixels get the zoomed look.",
    )

    @model_validator(mode="after")
    def _event_not_below_mask(self) -> DetectorConfig:
        if self.event_threshold < self.threshold:
            raise ValueError("event_threshold must be >= threshold (everything reported must also be masked)")
        if self.zoom_threshold is not None and self.zoom_threshold >= self.threshold:
            raise ValueError("zoom_threshold must be below threshold (it widens what gets a second look)")
        return self


class DetectionConfig(Strict):
    face: DetectorConfig = Field(
        # 20-40 px faces in 720p shrink below what CenterFace finds at 640 px. At 800 px live, the
        # leak benchmark's small faces still leaked 11.7% (found on some detections, lost between);
        # at 960 px, 0%, and one 720p15 camera still holds 15 fps on 2 cores (bench/live_bench.py).
        # A 20 px face scores only 0.1-0.2 at 960 px: the zoomed second look finds it (detect/zoom.py).
        default_factory=lambda: DetectorConfig(
            model="centerface",
            threshold=0.3,
            event_threshold=0.5,
            input_width=960,
            file_input_width=960,
            zoom_threshold=0.1,
        ),
        description="Face detector.",
    )
    license_plate: DetectorConfig = Field(
        # Plates are large and move smoothly: in file mode every other detection pass is enough. Not
        # live: where passes are far apart (a slow machine) a skipped pass outlives the plate's track.
        default_factory=lambda: DetectorConfig(
            model="yolov8n-plate", threshold=0.2, event_threshold=0.5, file_every_pass=2
        ),
        description="License-plate detector.",
    )
    person: DetectorConfig = Field(
        default_factory=lambda: DetectorConfig(
            model="ssdlite-person", enabled=False, threshold=0.3, event_threshold=0.5
        ),
        description="Whole-person detector (for cameras where faces are too small to find).",
    )
    providers: list[Literal["tensorrt", "cuda", "openvino", "cpu"]] = Field(
        default_factory=lambda: ["cuda", "cpu"],  # type: ignore[arg-type]
        min_length=1,
        description="onnxruntime execution providers in order of preference; unavailable ones are skipped.",
    )
    precision: Literal["auto", "float", "int8"] = Field(
        "auto",
        description="Which weights the detectors run: their int8 copies (made by `models fetch`; "
        "on this project's 2-core CPU 1.4-1.6x faster, and they found the same faces and plates on "
        "the leak benchmark's clips), or the float originals. auto = int8 for live cameras on the "
        "CPU, float on a GPU, on OpenVINO and for files (no frame budget there).",
    )
    threads: int = Field(
        0,
        ge=0,
        le=64,
        description="Inference threads per model run; 0 = the CPU cores (files) or the cores per "
        "inference worker (live cameras).",
    )
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Live cameras share these inference workers, each running one model at a time; "
        "0 = number of CPU cores (on a GPU, 1 with a larger max_batch).",
    )
    max_batch: int = Field(
        0,
        ge=0,
        le=64,
        description="At most this many cameras' frames go through a model in one run (models that "
        "take a batch); 0 = 1 on the CPU, where a batch is no faster and holds a batch's worth of "
        "memory (4 cameras: 170 MB more), and 4 on a GPU.",
    )


class AnonymizeConfig(Strict):
    method: Method = Field(Method.BLUR, description="How objects are hidden.")
    margin: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Grow each box by this fraction on every side (ears, hair and a turned head's edge).",
    )
    shape: Literal["box", "ellipse"] = Field(
        "box", description="Masked shape for faces (plates and persons always use the box)."
    )
    blocks: int = Field(
        8, ge=2, le=16, description="Pixelate: blocks across the object (<= 10 really anonymizes)."
    )
    fill_color: tuple[int, int, int] = Field((0, 0, 0), description="Fill: RGB colour.")
    replace_k: int = Field(
        5,
        ge=2,
        le=50,
        description="Replace: each synthetic face is an average of at least this many real faces (k-Same).",
    )
    replace_min_size: int = Field(
        40, ge=8, le=1024, description="Replace: faces narrower than this (pixels) are blurred instead."
    )
    replace_smoothing: float = Field(
        0.6,
        ge=0.0,
        le=0.95,
        description="Replace: weight of the past in each track's landmark average (0 = none; higher = steadier).",
    )
    replace_sources: str | None = Field(
        None, description="Replace: folder of source faces (manifest.json + PNGs); default: the bundled set."
    )
    replace_swapper: str | None = Field(
        None,
        description="Replace: path to a face-swap ONNX model you supply (inswapper contract: inputs "
        "'target' 1x3xSxS and 'source' 1xD); faces get its anonymous output. Never downloaded.",
    )
    plate_style: Literal["eu", "us", "generic"] = Field(
        "eu",
        description="Replace: look of the synthetic plates (all read ZZ#..., which no authority issues).",
    )

    @field_validator("fill_color")
    @classmethod
    def _rgb(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in value):
            raise ValueError("each colour component must be 0..255")
        return value


class Zone(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="Zone name, shown in the UI and events.")
    points: list[tuple[float, float]] = Field(
        min_length=3, description="Polygon corners as [x, y] fractions of the frame (0..1)."
    )

    @field_validator("points")
    @classmethod
    def _fractions(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if any(not (0 <= x <= 1 and 0 <= y <= 1) for x, y in value):
            raise ValueError("zone points are fractions of the frame: 0 <= x, y <= 1")
        return value


class PrivacyConfig(Strict):
    on_failure: FailMode = Field(
        FailMode.MASK,
        description="When detection is late, failed or not ready: mask the whole frame, or hold (drop) it.",
    )
    whole_frame: WholeFrameMask = Field(WholeFrameMask.PIXELATE, description="How a whole frame is masked.")
    detect_budget_ms: int = Field(
        700, ge=50, le=10_000, description="Detection older than this counts as missing (fail closed)."
    )
    hold_s: float = Field(
        1.0, ge=0.0, le=30.0, description="A track stays masked this long after its last detection."
    )
    # Causal by default, from the leak benchmark: with the edge guard, 0 leaked 0.3 % of face-frames
    # (faces that pop up mid-frame between two detections) and 200 ms none, for 200 ms more latency
    # (README, Performance); 200 ms is the setting for cameras where that matters more than latency.
    delay_ms: int = Field(
        0,
        ge=0,
        le=5000,
        description="Live look-ahead: publish frames this late so new objects are masked back "
        "(0 = causal: a face appearing between two detections shows until the next one).",
    )
    edge_band: float = Field(
        0.10,
        ge=0.0,
        le=0.5,
        description="Live: along each edge, a band this wide (fraction of the frame height) in which "
        "whatever moves is hidden, so a face entering or leaving is masked while only part of it is "
        "in view (before a detector can find it). 0 turns the guard off.",
    )
    detect_every: int = Field(
        0,
        ge=0,
        le=30,
        description="Run the full detector every Nth frame; 0 = choose from the measured cost.",
    )
    full_detect_s: float = Field(
        1.0,
        ge=0.0,
        le=10.0,
        description="Live: the detector looks at the whole frame at least this often (seconds); the "
        "passes between look only where the picture changed since it last looked there and around "
        "every tracked object, a fraction of the cost on a mostly still picture. 0 = every pass "
        "looks at the whole frame.",
    )
    file_detect_every: int = Field(
        2,
        ge=1,
        le=10,
        description="File mode: full detection every Nth frame; tracks and one second of look-ahead "
        "cover the frames between.",
    )


class Go2rtcConfig(Strict):
    url: str = Field("http://go2rtc:1984", description="go2rtc HTTP API base URL.")
    rtsp_url: str = Field(
        "rtsp://go2rtc:8554", description="go2rtc RTSP base URL that cameras are read from."
    )
    username: str | None = Field(
        None, description="go2rtc api/rtsp username (needed from another container)."
    )
    password: SecretStr | None = Field(None, description="go2rtc api/rtsp password. Use ${ENV} references.")
    register_streams: bool = Field(
        False, description="PUT each output stream into go2rtc and keep it registered."
    )
    api: Literal["go2rtc", "frigate"] = Field(
        "go2rtc", description="Register through go2rtc's API, or Frigate's proxy (/api/go2rtc/streams)."
    )
    frigate_url: str = Field("http://frigate:5000", description="Frigate's internal API (for api: frigate).")
    sidecar_url: str = Field(
        "http://deid-sidecar:8080", description="How go2rtc reaches this sidecar (base of the stream URLs)."
    )
    reconcile_s: float = Field(
        3.0,
        ge=1.0,
        le=3600.0,
        description="How often registrations are checked and re-sent: a go2rtc restarted with a config "
        "that lost the streams (Frigate rewrites it) serves them again within this time. One "
        "`GET /api/streams` per check.",
    )
    remove_on_exit: bool = Field(False, description="DELETE registered streams when the sidecar stops.")


class WebUserConfig(Strict):
    password: SecretStr = Field(description="Web UI login password (not empty). Use ${ENV}.")
    admin: bool = Field(
        False, description="May add cameras, save the config and (when enabled) see the original view."
    )

    @field_validator("password", mode="before")
    @classmethod
    def _not_empty(cls, value: Any) -> Any:
        # An unset `${ENV}` reference with an empty default arrives here as None.
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise ValueError("must not be empty (a login without a password); set it, e.g. ${WEB_PASSWORD}")
        return value


class ServerConfig(Strict):
    host: str = Field("0.0.0.0", description="Address the HTTP server listens on.")  # noqa: S104
    port: int = Field(8080, ge=1, le=65535, description="HTTP port: streams, API, web UI.")
    token: SecretStr | None = Field(
        None,
        description=f"Bearer token for the API (not for /healthz and streams), at least {MIN_TOKEN_LENGTH} "
        "characters. Use ${ENV}.",
    )
    stream_token: SecretStr | None = Field(
        None,
        description=f"Optional token go2rtc must send (?token=) to read the stream URLs, at least "
        f"{MIN_TOKEN_LENGTH} characters.",
    )
    users: dict[Annotated[str, Field(pattern=NAME_PATTERN)], WebUserConfig] = Field(
        default_factory=dict, description="Web UI logins besides `token` (username -> password, admin)."
    )
    allow_original_view: bool = Field(
        False,
        description="Let admins view cameras BEFORE anonymization in the web UI; every viewing is "
        "logged and audited. Leave off.",
    )
    jobs_dir: str | None = Field(
        None, description="Folder for upload-job results; default: a temporary folder."
    )
    job_concurrency: int = Field(1, ge=1, le=16, description="Upload jobs that run at the same time.")
    job_ttl_s: float = Field(
        3600.0, ge=60.0, le=604800.0, description="Seconds a finished job's result is kept before deletion."
    )
    max_upload_mb: int = Field(500, ge=1, le=20000, description="Largest accepted upload in MB.")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names this server answers to besides loopback and `host` while auth is off "
        "(a foreign Host header is refused: DNS rebinding).",
    )
    media_dirs: list[str] = Field(
        default_factory=list,
        description="Folders whose files an admin may probe or add as `file:` cameras from the web UI; "
        "files elsewhere are refused.",
    )
    preview_viewers: int = Field(
        10, ge=1, le=100, description="Live preview (MJPEG) viewers per camera at the same time."
    )

    @field_validator("token", "stream_token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"must be at least {MIN_TOKEN_LENGTH} characters (e.g. `openssl rand -hex 16`), or left unset"
            )
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        for host in value:
            if not _is_host_name(host):
                raise ValueError(f"{host!r} is not a host name or IP address (no scheme, port or path)")
        return value

    @field_validator("media_dirs")
    @classmethod
    def _folders(cls, value: list[str]) -> list[str]:
        # '' would be the working directory: a folder must be named.
        if any(not folder.strip() for folder in value):
            raise ValueError("a folder must not be empty")
        return value


class MqttConfig(Strict):
    enabled: bool = Field(False, description="Publish events and Home Assistant discovery over MQTT.")
    host: str = Field("mosquitto", description="Broker host.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    username: str | None = Field(None, description="Broker username.")
    password: SecretStr | None = Field(None, description="Broker password. Use ${ENV}.")
    tls: bool = Field(False, description="Connect with TLS.")
    ca_file: str | None = Field(None, description="CA bundle for TLS (system CAs when empty).")
    client_id: str = Field("deid-sidecar", pattern=NAME_PATTERN, description="MQTT client id.")
    keepalive_s: int = Field(30, ge=5, le=3600, description="Keepalive interval.")
    prefix: str = Field("deid", pattern=NAME_PATTERN, description="Topic prefix (never `frigate`).")
    discovery: bool = Field(True, description="Publish Home Assistant MQTT discovery.")
    discovery_prefix: str = Field("homeassistant", pattern=NAME_PATTERN, description="HA discovery prefix.")
    snapshots: bool = Field(True, description="Publish a JPEG of the ANONYMIZED frame when an event starts.")
    remove_stale_devices: bool = Field(
        True,
        description="Remove the Home Assistant devices of cameras no longer in the config (found from "
        "their retained discovery messages).",
    )
    allow_remote_unmask: bool = Field(
        False, description="Allow `<prefix>/<cam>/privacy/set OFF` to turn masking off. Leave off."
    )
    update_interval_s: float = Field(
        1.0, ge=0.1, le=60.0, description="Minimum interval between `update` events per object."
    )
    min_event_s: float = Field(
        0.0,
        ge=0.0,
        le=30.0,
        description="An object is in view this long (tracker coasting included) before its `new` event; "
        "shorter blips never become events (0: at first sight). The tracker keeps a single detection in "
        "view for `privacy.hold_s`, so only a longer value drops one. Counts change at once either way.",
    )
    event_merge_s: float = Field(
        2.0,
        ge=0.0,
        le=30.0,
        description="A new track of the same label that appears within this time of losing an object, near "
        "where that object was heading, continues its event: same id, no second `new` (0: off). An `end` "
        "waits at least this long.",
    )
    queue_size: int = Field(
        1000, ge=10, le=100_000, description="Outgoing messages buffered while the broker is away."
    )

    @field_validator("prefix")
    @classmethod
    def _not_frigate(cls, value: str) -> str:
        if value == "frigate":
            raise ValueError("must not be 'frigate': Frigate's own topics and blueprints would be confused")
        return value


class OutputConfig(Strict):
    name: str | None = Field(
        None, pattern=NAME_PATTERN, description="Anonymized stream name; default `<camera>_anon`."
    )
    fps: float = Field(15.0, ge=MIN_OUTPUT_FPS, le=MAX_OUTPUT_FPS, description="Output frames per second.")
    height: int | None = Field(
        None,
        ge=MIN_OUTPUT_HEIGHT,
        le=MAX_OUTPUT_HEIGHT,
        description="Output height in pixels (width keeps aspect); default: source.",
    )
    bitrate_kbps: int = Field(2000, ge=100, le=50_000, description="Target video bitrate.")
    encoder: Literal["auto", "libx264", "h264_nvenc", "h264_qsv"] = Field(
        "auto", description="H.264 encoder; auto probes hardware encoders and falls back to libx264."
    )
    push: Literal["none", "http"] = Field(
        "none",
        description="Also push into an existing (declared) go2rtc stream with POST /api/stream.ts.",
    )


class CameraConfig(Strict):
    source: str = Field(
        description="`go2rtc:<name>`, `rtsp://...`, `http(s)://...`, `file:<path>` or `/dev/videoN`."
    )
    detect_source: str | None = Field(
        None, description="Optional lower-resolution stream to detect on (same forms as `source`)."
    )
    loop: bool = Field(False, description="file: sources start again at the end (demo and tests).")
    enabled: bool = Field(True, description="Run this camera.")
    protect: list[Literal["face", "license_plate", "person"]] = Field(
        default_factory=lambda: ["face", "license_plate"],  # type: ignore[arg-type]
        min_length=1,
        description="What to anonymize on this camera.",
    )
    method: Method | None = Field(None, description="Overrides `anonymize.method` for this camera.")
    zones: list[Zone] = Field(default_factory=list, description="Areas that are always masked.")
    invert_zones: bool = Field(False, description="Mask everything OUTSIDE the zones instead.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="The anonymized stream.")

    @field_validator("source", "detect_source")
    @classmethod
    def _source_form(cls, value: str | None) -> str | None:
        # The form only: whether a file: source exists is checked by `preflight` (it is I/O).
        problem = None if value is None else source_form_error(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @property
    def has_zones(self) -> bool:
        return bool(self.zones)


class Config(Strict):
    models_dir: str = Field("models", description="Where fetched models are cached (relative to the cwd).")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log verbosity.")
    detection: DetectionConfig = Field(default_factory=DetectionConfig, description="Detectors.")
    anonymize: AnonymizeConfig = Field(default_factory=AnonymizeConfig, description="Masking method.")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig, description="Fail-closed and tracking.")
    server: ServerConfig = Field(default_factory=ServerConfig, description="HTTP server.")
    go2rtc: Go2rtcConfig = Field(default_factory=Go2rtcConfig, description="go2rtc connection.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT and Home Assistant.")
    cameras: dict[Annotated[str, Field(pattern=NAME_PATTERN)], CameraConfig] = Field(
        default_factory=dict, description="Cameras by name."
    )

    @model_validator(mode="after")
    def _protected_kinds_have_a_detector(self) -> Config:
        # Protecting something no detector looks for would pass it through in the clear.
        for cam_name, cam in self.cameras.items():
            for kind in cam.protect:
                if not getattr(self.detection, kind).enabled:
                    raise ValueError(
                        f"cameras.{cam_name}.protect: {kind} needs detection.{kind}.enabled: true"
                    )
        return self

    @model_validator(mode="after")
    def _outputs_never_shadow_sources(self) -> Config:
        # Stream names of go2rtc: sources and of rtsp(s):// sources (the last path segment).
        outputs: dict[str, str] = {}
        sources = {
            name
            for cam in self.cameras.values()
            for source in (cam.source, cam.detect_source)
            if source and (name := stream_name(source)) is not None
        }
        for cam_name, cam in self.cameras.items():
            out = output_name(cam_name, cam)
            if out in outputs:
                raise ValueError(f"cameras.{cam_name}.output.name: {out!r} is also used by {outputs[out]}")
            if out in sources or out in self.cameras:
                raise ValueError(
                    f"cameras.{cam_name}.output.name: {out!r} is a source stream name; a raw and an "
                    "anonymized stream must never share a name"
                )
            outputs[out] = cam_name
        return self


def enabled_cameras(config: Config) -> dict[str, CameraConfig]:
    """The cameras the config runs (`enabled: true`)."""
    return {name: camera for name, camera in config.cameras.items() if camera.enabled}


def output_name(camera_name: str, camera: CameraConfig) -> str:
    return camera.output.name or f"{camera_name}_anon"


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(text: str, environ: dict[str, str] | None = None, missing: str | None = None) -> str:
    """Replace `${NAME}` and `${NAME:-default}`; an unset variable without default is an error,
    or `missing` when given (for commands that never use the values, e.g. `go2rtc-yaml`)."""
    env = os.environ if environ is None else environ

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        if missing is not None:
            return missing
        raise ConfigError(f"environment variable {name} is referenced in the config but not set")

    return _ENV_REF.sub(replace, text)


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown option"
        # Cross-field checks name their key paths in the message themselves.
        lines.append(f"{path}: {message}" if path else message)
    return "; ".join(lines)


def parse_config(data: dict[str, Any] | None) -> Config:
    try:
        return Config.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def load_config(path: str | Path, missing_env: str | None = None) -> Config:
    """Read, substitute and validate a config file; every problem is one ConfigError line.

    `missing_env`: the value of `${NAME}` references whose variable is unset (default: an error)."""
    file = Path(path)
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{file}: larger than {MAX_CONFIG_BYTES >> 20} MiB, not a config file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{file}: not a text file (byte {exc.start} is not UTF-8); a config is YAML"
        ) from None
    return load_config_text(text, str(file), missing_env)


def load_config_text(text: str, origin: str = "config", missing_env: str | None = None) -> Config:
    """`load_config` for a text already read (`origin` names it in messages): the same checks."""
    data = load_yaml_strict(text, origin)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of options")
    warnings = list(_inline_passwords(data, ""))  # before substitution: ${ENV} is what is wanted
    config = parse_config(_substitute_values(data, missing_env))
    for key, url in warnings:  # only for a config that loads: a refusal is the one line that matters
        log.warning(
            "%s: %s has its password written in the config file; put it in an environment variable "
            "and write ${NAME} instead",
            key,
            mask_url(url),
        )
    return config


def preflight(config: Config) -> None:
    """Checks that touch the file system, which validation does not: `check-config` and `run` both
    call it after `load_config`, so that `run` refuses exactly what `check-config` refuses."""
    problems = []
    for name, camera in config.cameras.items():
        for key in ("source", "detect_source"):
            value = getattr(camera, key)
            problem = file_source_error(value) if value else None
            if problem is not None:
                problems.append(f"cameras.{name}.{key}: {problem}")
    mqtt = config.mqtt
    if mqtt.enabled and mqtt.tls and mqtt.ca_file and not Path(mqtt.ca_file).is_file():
        problems.append(f"mqtt.ca_file: file {mqtt.ca_file} does not exist")
    faces = config.anonymize.replace_sources
    if faces and not Path(faces).is_dir():
        problems.append(f"anonymize.replace_sources: folder {faces} does not exist")
    swapper = config.anonymize.replace_swapper
    if swapper and not Path(swapper).is_file():
        problems.append(f"anonymize.replace_swapper: file {swapper} does not exist")
    if problems:
        raise ConfigError("; ".join(problems))


def _is_host_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return re.fullmatch(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})", host) is not None
    return True


# --- YAML ---------------------------------------------------------------------------------------

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses, with the line, what would otherwise be a traceback, a hang or a
    silent surprise: deep nesting, alias bombs and recursive aliases, duplicate keys."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        # Values each composed node holds once aliases are expanded (by id: nodes live until the end).
        self._expanded: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in the stubs
        line = event.start_mark.line + 1 if event.start_mark is not None else 0
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            if node is not None and id(node) not in self._expanded:
                raise ConfigError(
                    f"line {line}: an alias refers to a value that contains it (recursive alias)"
                )
            return node
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ConfigError(f"line {line}: values are nested more than {MAX_YAML_DEPTH} levels deep")
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is None:
            return None
        expanded = 1 + sum(self._expanded.get(id(child), 1) for child in _children(node))
        if expanded > MAX_YAML_NODES:
            raise ConfigError(
                f"line {line}: more than {MAX_YAML_NODES} values once its aliases (*name) are expanded; "
                "refused (an alias bomb?)"
            )
        self._expanded[id(node)] = expanded
        if isinstance(node, yaml.MappingNode):
            self._refuse_duplicate_keys(node)
        return node

    def _refuse_duplicate_keys(self, node: yaml.MappingNode) -> None:
        # Checked on the composed node, before merge keys (`<<: *base`) are flattened into it: a key
        # given explicitly next to a merge overrides the merged one, as YAML intends.
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ConfigError(
                    f"line {line}: duplicate key {key!r} (already set on line {first_line[key]}); "
                    "only one may be given"
                )
            first_line[key] = line


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: where, then what."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return where + " ".join(part for part in (exc.context, exc.problem) if part)
    return " ".join(str(exc).split())


def load_yaml_strict(text: str, origin: str) -> Any:
    """YAML as the config reads it: safe types only, a key given twice or an alias bomb refused."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {_yaml_problem(exc)}") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of 5000 digits, a bad date
        raise ConfigError(f"{origin}: not valid YAML: {' '.join(str(exc).split())}") from None


def _key_path(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _inline_passwords(data: Any, path: str) -> Iterator[tuple[str, str]]:
    """(key path, URL) of each URL value with its password written in the file, not in ${ENV}."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _inline_passwords(value, _key_path(path, key))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            yield from _inline_passwords(item, _key_path(path, index))
    elif isinstance(data, str) and inline_password(data):
        yield path or "(top level)", data


def _substitute_values(data: Any, missing: str | None = None) -> Any:
    """`${ENV}` substitution in string VALUES only: comments and keys are left alone."""
    if isinstance(data, dict):
        return {key: _substitute_values(value, missing) for key, value in data.items()}
    if isinstance(data, list):
        return [_substitute_values(item, missing) for item in data]
    if isinstance(data, str):
        value = substitute_env(data, missing=missing)
        return None if value == "" and data != "" else value
    return data
