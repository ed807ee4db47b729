"""integration/: compose files, Frigate and go2rtc snippets and sidecar configs agree with each other and
with the code (config validation, `render_yaml_snippets`, the Dockerfile), and hold no literal secret."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from deid_sidecar.config import Config, load_config, output_name
from deid_sidecar.outputs.go2rtc import render_yaml_snippets

ROOT = Path(__file__).resolve().parents[1]
INTEGRATION = ROOT / "integration"
SIDECAR_SERVICE = "deid-sidecar"

#: compose file -> (sidecar config, go2rtc service, file holding the go2rtc streams, variant)
SETUPS = {
    "docker-compose.frigate.yml": ("config.frigate.yml", "frigate", "frigate/config.yml", "gpu"),
    "docker-compose.go2rtc-ha.yml": ("config.go2rtc-ha.yml", "go2rtc", "go2rtc/go2rtc.yaml", "cpu"),
}
#: Setups whose go2rtc holds only anonymized streams: the sidecar reads the cameras directly. Frigate's
#: go2rtc is one of them because Frigate's UI (8971) lets any logged-in user play any of its streams.
PRIVATE_SETUPS = {"docker-compose.frigate.yml"}
PUSH = ("config.go2rtc-push.yml", "go2rtc/go2rtc.push.yaml")
FRIGATE_IMAGE = "ghcr.io/blakeblackshear/frigate"
#: Variables only the sidecar gets in the Frigate setup.
CAMERA_VARS = {"CAMERA_USER", "CAMERA_PASSWORD"}

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: A reference without a default value: `${VAR}`, compose's `${VAR:?message}`, Frigate's `{FRIGATE_VAR}`.
SECRET_REF = re.compile(r"^(\$\{[A-Za-z_][A-Za-z0-9_]*(:\?[^}]*)?\}|\{FRIGATE_[A-Z0-9_]+\})$")
SECRET_KEY = re.compile(r"(pass(word)?|secret|token|credential)$", re.IGNORECASE)
URL_USERINFO = re.compile(r"://([^/@\s:]+):([^/@\s]+)@")


def yaml_files() -> list[Path]:
    return sorted(p for p in INTEGRATION.rglob("*") if p.suffix in {".yml", ".yaml"})


def load(relative: str) -> Any:
    return yaml.safe_load((INTEGRATION / relative).read_text(encoding="utf-8"))


def env_names(path: Path) -> set[str]:
    """`${VAR}` names in the file's VALUES (comments mention some as examples)."""
    values = [v for _key, v in walk(yaml.safe_load(path.read_text(encoding="utf-8"))) if isinstance(v, str)]
    return {match.group(1) for value in values for match in ENV_REF.finditer(value)}


def sidecar_config(name: str, monkeypatch: pytest.MonkeyPatch) -> Config:
    path = INTEGRATION / "deid-sidecar" / name
    for var in env_names(path):
        monkeypatch.setenv(var, f"test-{var.lower()}")
    return load_config(path)


def outputs(config: Config) -> set[str]:
    return {output_name(name, cam) for name, cam in config.cameras.items() if cam.enabled}


def anon_streams(streams: dict[str, Any]) -> dict[str, Any]:
    return {name: source for name, source in streams.items() if name.endswith("_anon")}


def go2rtc_streams(relative: str) -> dict[str, Any]:
    data = load(relative)
    return data["go2rtc"]["streams"] if "go2rtc" in data else data["streams"]


def rendered_urls(config: Config) -> dict[str, str]:
    """Stream name -> URL in `render_yaml_snippets`' output (the go2rtc and Frigate files agree)."""
    urls: dict[str, str] = {}
    for target in ("go2rtc", "frigate"):
        for name, url in re.findall(
            r"^\s*([A-Za-z0-9_.-]+): (https?://\S+)$", render_yaml_snippets(config, target), re.M
        ):
            assert urls.setdefault(name, url) == url
    return urls


def host_port(url: str) -> tuple[str | None, int | None]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def walk(data: Any, path: str = "") -> list[tuple[str, Any]]:
    """(dotted key path, scalar) for every scalar in a YAML document."""
    if isinstance(data, dict):
        return [
            item for key, value in data.items() for item in walk(value, f"{path}.{key}" if path else str(key))
        ]
    if isinstance(data, list):
        return [item for i, value in enumerate(data) for item in walk(value, f"{path}[{i}]")]
    return [(path, data)]


def published_container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(port).split(":")[-1].split("/")[0]) for port in service.get("ports", [])}


# --- every file -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(INTEGRATION)))
def test_yaml_parses(path: Path) -> None:
    assert yaml.safe_load(path.read_text(encoding="utf-8")) is not None


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(INTEGRATION)))
def test_no_literal_secrets(path: Path) -> None:
    for key, value in walk(yaml.safe_load(path.read_text(encoding="utf-8"))):
        leaf = re.split(r"[.\[]", key)[-1]
        if SECRET_KEY.search(leaf) and value not in (None, ""):
            assert isinstance(value, str) and SECRET_REF.match(value), f"{key}: literal secret {value!r}"
        if isinstance(value, str):
            for _user, secret in URL_USERINFO.findall(value):
                assert SECRET_REF.match(secret), f"{key}: URL with a literal password"
    # `${VAR:-default}` would hide a literal secret in its default.
    for match in ENV_REF.finditer(path.read_text(encoding="utf-8")):
        if SECRET_KEY.search(match.group(1)):
            assert not match.group(2), f"{match.group(0)}: a secret with a default value"


@pytest.mark.parametrize("name", sorted(p.name for p in (INTEGRATION / "deid-sidecar").glob("*.yml")))
def test_sidecar_configs_validate(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = sidecar_config(name, monkeypatch)
    assert config.cameras
    assert config.models_dir == "/models"  # where the image bakes them
    assert config.mqtt.prefix != "frigate"


# --- compose files ------------------------------------------------------------------------------


@pytest.mark.parametrize("compose_name", sorted(SETUPS))
def test_compose_sidecar_service(compose_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config_name, go2rtc_service, _streams_file, variant = SETUPS[compose_name]
    compose = load(compose_name)
    services = compose["services"]
    sidecar = services[SIDECAR_SERVICE]
    build = sidecar["build"]
    assert (INTEGRATION / build["context"]).resolve() == ROOT
    assert (ROOT / build.get("dockerfile", "Dockerfile")).is_file()
    assert build["args"]["VARIANT"] == variant
    assert sidecar["image"] == f"deid-sidecar:{variant}"
    gpu = sidecar.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if variant == "gpu":
        assert gpu == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    else:
        assert not gpu

    mounts = {m.split(":")[1]: m.split(":")[0] for m in sidecar["volumes"]}
    assert mounts["/config/config.yml"] == f"./deid-sidecar/{config_name}"
    config = sidecar_config(config_name, monkeypatch)
    # Every ${VAR} the sidecar config needs is passed into the container.
    assert env_names(INTEGRATION / "deid-sidecar" / config_name) <= set(sidecar["environment"])

    # One port everywhere: Dockerfile EXPOSE, server.port, the published port, the URL go2rtc pulls.
    expose = re.search(r"^EXPOSE (\d+)$", (ROOT / "Dockerfile").read_text(encoding="utf-8"), re.M)
    assert expose is not None
    assert config.server.port == int(expose.group(1))
    assert published_container_ports(sidecar) <= {config.server.port}
    assert host_port(config.go2rtc.sidecar_url) == (SIDECAR_SERVICE, config.server.port)

    # The sidecar's go2rtc and MQTT hosts are services of the same compose project.
    assert host_port(config.go2rtc.url) == (go2rtc_service, 1984)
    if compose_name not in PRIVATE_SETUPS:  # the private setup reads no camera through go2rtc
        assert host_port(config.go2rtc.rtsp_url) == (go2rtc_service, 8554)
    assert config.mqtt.enabled and config.mqtt.host in services
    assert set(sidecar["depends_on"]) >= {go2rtc_service, config.mqtt.host}


@pytest.mark.parametrize("compose_name", sorted(SETUPS))
def test_compose_does_not_publish_raw_stream_ports(compose_name: str) -> None:
    services = load(compose_name)["services"]
    for name, service in services.items():
        # go2rtc's API and RTSP serve the RAW streams; Frigate's 5000 has no authentication.
        assert not published_container_ports(service) & {1984, 8554, 5000, 1883}, name


@pytest.mark.parametrize("compose_name", sorted(SETUPS))
def test_compose_bind_mounted_files_exist(compose_name: str) -> None:
    for service in load(compose_name)["services"].values():
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and volume.startswith("./"):
                source = INTEGRATION / volume.split(":")[0]
                if source.suffix in {".yml", ".yaml"} or source.name in {"go2rtc"}:
                    assert source.exists(), volume


def test_go2rtc_and_frigate_get_the_variables_their_configs_reference() -> None:
    services = load("docker-compose.go2rtc-ha.yml")["services"]
    assert env_names(INTEGRATION / "go2rtc" / "go2rtc.yaml") <= set(services["go2rtc"]["environment"])
    frigate_env = set(load("docker-compose.frigate.yml")["services"]["frigate"]["environment"])
    text = (INTEGRATION / "frigate" / "config.yml").read_text(encoding="utf-8")
    assert set(re.findall(r"\{(FRIGATE_[A-Z0-9_]+)\}", text)) <= frigate_env
    assert env_names(INTEGRATION / "frigate" / "config.yml") <= frigate_env


def test_only_the_sidecar_gets_the_camera_credentials() -> None:
    """Frigate setup: the sidecar reads the cameras, so it alone gets CAMERA_* (required, from .env)."""
    services = load("docker-compose.frigate.yml")["services"]
    sidecar_env = services[SIDECAR_SERVICE]["environment"]
    assert env_names(INTEGRATION / "deid-sidecar" / "config.frigate.yml") >= CAMERA_VARS
    for var in CAMERA_VARS:
        assert re.fullmatch(rf"\$\{{{var}:\?[^}}]+\}}", sidecar_env[var]), var
    for name, service in services.items():
        if name == SIDECAR_SERVICE:
            continue
        for key, value in service.get("environment", {}).items():
            assert "CAMERA" not in key and "CAMERA" not in str(value), f"{name}: {key}"
    text = (INTEGRATION / "frigate" / "config.yml").read_text(encoding="utf-8")
    assert not re.search(r"\{FRIGATE_CAMERA_|\$\{CAMERA_", text)


# --- stream names and URLs ------------------------------------------------------------------------


@pytest.mark.parametrize("compose_name", sorted(SETUPS))
def test_stream_names_agree(compose_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config_name, _service, streams_file, _variant = SETUPS[compose_name]
    config = sidecar_config(config_name, monkeypatch)
    streams = go2rtc_streams(streams_file)
    assert set(anon_streams(streams)) == outputs(config) == {f"{cam}_anon" for cam in config.cameras}
    if compose_name in PRIVATE_SETUPS:
        # No raw stream at all: the sidecar reads the cameras itself.
        assert set(streams) == set(anon_streams(streams))
        return
    # Every camera the sidecar reads is a raw stream of that go2rtc.
    raw = {cam.source.removeprefix("go2rtc:") for cam in config.cameras.values()}
    assert raw == set(streams) - set(anon_streams(streams))


def test_dashboard_uses_streams_the_sidecar_produces(monkeypatch: pytest.MonkeyPatch) -> None:
    dashboard = (INTEGRATION / "homeassistant" / "dashboard.yaml").read_text(encoding="utf-8")
    used = set(re.findall(r"\b([A-Za-z0-9]+(?:_[A-Za-z0-9]+)*_anon)\b", dashboard))
    assert used
    for config_name, *_ in SETUPS.values():
        assert used <= outputs(sidecar_config(config_name, monkeypatch))


@pytest.mark.parametrize("compose_name", sorted(SETUPS))
def test_pull_urls_match_render_yaml_snippets(compose_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config_name, _service, streams_file, _variant = SETUPS[compose_name]
    config = sidecar_config(config_name, monkeypatch)
    expected = rendered_urls(config)
    assert anon_streams(go2rtc_streams(streams_file)) == expected
    port = config.server.port
    for name, url in expected.items():
        assert url == f"http://{SIDECAR_SERVICE}:{port}/streams/{name}.ts"


def test_push_snippet_declares_empty_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    config_name, streams_file = PUSH
    config = sidecar_config(config_name, monkeypatch)
    assert not config.go2rtc.register_streams  # a registration would PUT a pull source into them
    assert all(cam.output.push != "none" for cam in config.cameras.values())
    declared = anon_streams(go2rtc_streams(streams_file))
    assert declared == dict.fromkeys(outputs(config))  # name: (empty)
    assert "/api/stream.ts" in load(streams_file)["api"]["allow_paths"]


# --- Frigate: private by construction -------------------------------------------------------------
# Frigate's nginx on 8971 forwards its live-view paths to go2rtc over loopback (no go2rtc credentials),
# so ANY logged-in Frigate user, whatever the role, can play any stream Frigate's go2rtc holds. The
# default Frigate files therefore keep the raw feed out of Frigate entirely.


def test_frigate_go2rtc_holds_only_the_sidecars_anonymized_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    config = sidecar_config("config.frigate.yml", monkeypatch)
    streams = go2rtc_streams("frigate/config.yml")
    assert set(streams) == outputs(config)
    for name, source in streams.items():
        # One pull URL of the sidecar each: no raw camera, no second source, no credentials.
        assert isinstance(source, str), f"{name}: one source, not {source!r}"
        parts = urlsplit(source)
        assert (parts.scheme, parts.hostname, parts.port) == ("http", SIDECAR_SERVICE, config.server.port)
        assert parts.path == f"/streams/{name}.ts", name
        assert parts.username is None and parts.password is None, name


def test_frigate_holds_no_camera_url_or_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    config = sidecar_config("config.frigate.yml", monkeypatch)
    camera_hosts = {
        urlsplit(source).hostname
        for cam in config.cameras.values()
        for source in (cam.source, cam.detect_source)
        if source
    }
    assert camera_hosts and SIDECAR_SERVICE not in camera_hosts
    for key, value in walk(load("frigate/config.yml")):
        if not isinstance(value, str):
            continue
        assert not URL_USERINFO.search(value), f"{key}: a URL with credentials"
        if "://" in value:
            assert urlsplit(value).hostname not in camera_hosts, f"{key}: a camera URL"


def test_frigate_cameras_read_only_their_anonymized_restream(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every camera records and detects ONLY `<cam>_anon`, at the sidecar's output size, and its live
    view lists only anonymized streams: recordings, snapshots, stills and the jsmpeg fallback too."""
    config = sidecar_config("config.frigate.yml", monkeypatch)
    frigate = load("frigate/config.yml")
    cameras = frigate["cameras"]
    assert set(cameras) == set(config.cameras)
    anonymized = set(anon_streams(frigate["go2rtc"]["streams"]))
    for name, camera in cameras.items():
        inputs = camera["ffmpeg"]["inputs"]
        assert [i["path"] for i in inputs] == [f"rtsp://127.0.0.1:8554/{name}_anon"], name
        assert inputs[0]["input_args"] == "preset-rtsp-restream"
        assert set(inputs[0]["roles"]) == {"record", "detect"}
        assert camera["detect"]["height"] == config.cameras[name].output.height
        live = camera["live"]["streams"]
        assert next(iter(live.values())) == f"{name}_anon", name  # the dashboard's default
        assert set(live.values()) <= anonymized, name


def test_frigate_config_contains_what_go2rtc_yaml_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    """`deid-sidecar go2rtc-yaml --for frigate` and the shipped Frigate config describe the same layout."""
    config = sidecar_config("config.frigate.yml", monkeypatch)
    snippet = yaml.safe_load(render_yaml_snippets(config, "frigate"))
    frigate = load("frigate/config.yml")
    assert frigate["go2rtc"]["streams"] == snippet["go2rtc"]["streams"]
    for name, expected in snippet["cameras"].items():
        camera = frigate["cameras"][name]
        assert camera["ffmpeg"]["inputs"] == expected["ffmpeg"]["inputs"], name
        assert camera["live"] == expected["live"], name


def test_sidecar_reads_the_cameras_not_frigates_go2rtc(monkeypatch: pytest.MonkeyPatch) -> None:
    config = sidecar_config("config.frigate.yml", monkeypatch)
    services = set(load("docker-compose.frigate.yml")["services"])
    for name, cam in config.cameras.items():
        for source in (cam.source, cam.detect_source):
            if source is None:
                continue
            assert not source.startswith("go2rtc:"), name
            parts = urlsplit(source)
            assert parts.scheme in {"rtsp", "rtsps"}, name
            # A camera on the LAN, not a service of the compose project (rtsp://frigate:8554/...).
            assert parts.hostname not in services, name
            assert (parts.username, parts.password) == ("test-camera_user", "test-camera_password"), name
    # Still registered in Frigate's go2rtc, which pulls them from the sidecar.
    assert config.go2rtc.register_streams


def test_frigate_compose_service_follows_frigates_docs() -> None:
    frigate = load("docker-compose.frigate.yml")["services"]["frigate"]
    image, _, tag = frigate["image"].partition(":")
    assert image == FRIGATE_IMAGE
    # Pinned to a tested release (`0.17.2`, optionally with a variant suffix), never :stable/:latest.
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[a-z0-9]+)?", tag), frigate["image"]
    assert frigate["stop_grace_period"] == "30s"
    assert "/etc/localtime:/etc/localtime:ro" in frigate["volumes"]


def test_frigate_go2rtc_has_credentials() -> None:
    """They guard the anonymized streams from the network; the sidecar registers with them."""
    go2rtc = load("frigate/config.yml")["go2rtc"]
    for section in ("api", "rtsp"):
        assert go2rtc[section]["username"] and go2rtc[section]["password"]
    assert load("go2rtc/go2rtc.yaml")["api"]["allow_paths"]
