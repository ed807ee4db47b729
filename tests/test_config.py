"""Config: every bad key or value stops start-up with a message naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from deid_sidecar.config import load_config, parse_config, substitute_env
from deid_sidecar.config_docs import render_config_reference
from deid_sidecar.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_documents_a_valid_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEID_ADMIN_PASSWORD", "from-the-environment")
    monkeypatch.setenv("DRIVEWAY_PASSWORD", "camera-password")
    config = load_config(ROOT / "config.example.yml")
    assert config.server.users["admin"].password.get_secret_value() == "from-the-environment"
    assert set(config.cameras) == {"front_door", "driveway"}
    assert config.cameras["front_door"].zones[0].name == "neighbours_window"
    assert config.cameras["driveway"].source == "rtsp://user:camera-password@192.168.1.20:554/stream1"


def test_example_config_follows_its_own_advice(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No password is written in the example: loading it logs no inline-password warning.
    monkeypatch.setenv("DEID_ADMIN_PASSWORD", "from-the-environment")
    monkeypatch.setenv("DRIVEWAY_PASSWORD", "camera-password")
    with caplog.at_level("WARNING", logger="deid_sidecar.config"):
        load_config(ROOT / "config.example.yml")
    assert caplog.records == []


def test_every_option_of_the_schema_appears_in_the_example() -> None:
    text = (ROOT / "config.example.yml").read_text()
    reference = render_config_reference()
    options = {line.split("`")[1] for line in reference.splitlines() if line.startswith("| `")}
    missing = sorted(option for option in options if f"{option}:" not in text)
    assert not missing, f"config.example.yml does not show: {missing}"


def test_generated_reference_is_current() -> None:
    assert (ROOT / "docs" / "config.md").read_text() == render_config_reference(), (
        "run: .venv/bin/deid-sidecar config-docs -o docs/config.md"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cameras": {"front": {"source": "go2rtc:front", "output": {"fps": 90}}}},
         "cameras.front.output.fps: Input should be less than or equal to 60"),
        ({"cameras": {"front": {"source": "go2rtc:front", "colour": "red"}}}, "cameras.front.colour: unknown option"),
        ({"cameras": {"front": {"output": {"fps": 10}}}}, "cameras.front.source: Field required"),
        ({"anonymize": {"method": "smudge"}}, "anonymize.method: Input should be 'blur', 'pixelate', 'fill' or 'replace'"),
        ({"mqtt": {"prefix": "frigate"}}, "mqtt.prefix: must not be 'frigate'"),
        ({"detection": {"face": {"model": "centerface", "threshold": 0.6, "event_threshold": 0.4}}},
         "detection.face: event_threshold must be >= threshold"),
        ({"cameras": {"a": {"source": "go2rtc:a", "zones": [{"name": "z", "points": [[0, 0], [2, 0], [1, 1]]}]}}},
         "cameras.a.zones.0.points: zone points are fractions"),
        ({"cameras": {"bad name!": {"source": "go2rtc:x"}}}, "cameras.bad name!.[key]: String should match pattern"),
        ({"cameras": {"yard": {"source": "go2rtc:yard", "protect": ["person"]}}},
         "cameras.yard.protect: person needs detection.person.enabled: true"),
    ],
)  # fmt: skip
def test_invalid_values_name_their_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(data)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "cameras",
    [
        {"front": {"source": "go2rtc:front", "output": {"name": "front"}}},
        {"front": {"source": "go2rtc:front"}, "back": {"source": "go2rtc:front_anon"}},
        {
            "a": {"source": "go2rtc:a", "output": {"name": "x"}},
            "b": {"source": "go2rtc:b", "output": {"name": "x"}},
        },
    ],
)
def test_an_output_never_shares_a_name_with_a_source_or_another_output(cameras: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"output\.name"):
        parse_config({"cameras": cameras})


def test_env_references_are_substituted_in_values_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MQTT_PW", "s3cret")
    file = tmp_path / "c.yml"
    file.write_text(
        "# comment with ${NOT_SET}\nmqtt:\n  password: ${MQTT_PW}\n  username: ${MQTT_USER:-bob}\n"
    )
    config = load_config(file)
    assert config.mqtt.password is not None and config.mqtt.password.get_secret_value() == "s3cret"
    assert config.mqtt.username == "bob"
    assert "s3cret" not in repr(config)


def test_unset_env_reference_is_an_error() -> None:
    with pytest.raises(ConfigError, match="NOPE_NOT_SET is referenced"):
        substitute_env("${NOPE_NOT_SET}", {})


@pytest.mark.parametrize(
    ("text", "message"),
    [("cameras: [1, 2", "not valid YAML"), ("- a\n- b\n", "top level must be a mapping")],
)
def test_unreadable_files_are_reported(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "c.yml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(file)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yml")
