"""Config hardening: no file, however crafted, gives a traceback, a hang or a silently wrong setup.

Each refusal is one ConfigError whose message names the key (or the line) and says why.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import pytest

from deid_sidecar.config import (
    MAX_YAML_DEPTH,
    MIN_TOKEN_LENGTH,
    load_config,
    parse_config,
    preflight,
)
from deid_sidecar.errors import ConfigError


def write(tmp_path: Path, text: str | bytes, name: str = "c.yml") -> Path:
    file = tmp_path / name
    if isinstance(text, bytes):
        file.write_bytes(text)
    else:
        file.write_text(text, encoding="utf-8")
    return file


def refusal(tmp_path: Path, text: str | bytes) -> str:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    message = str(error.value)
    assert "\n" not in message, message
    return message


def billion_laughs(levels: int = 9, fanout: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * fanout) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * fanout) + "]")
    return "\n".join(lines) + "\n"


# --- the file itself ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", b"cameras:\n  front:\n    source: go2rtc:fr\xe9nt\n"],
    ids=["binary", "latin-1"],
)
def test_a_file_that_is_not_utf8_text_is_refused(tmp_path: Path, content: bytes) -> None:
    assert "not a text file" in refusal(tmp_path, content)


def test_a_huge_file_is_refused_without_parsing_it(tmp_path: Path) -> None:
    assert "larger than 1 MiB" in refusal(tmp_path, "# padding\n" * 200_000)


def test_deep_nesting_is_refused_by_depth_not_by_a_recursion_error(tmp_path: Path) -> None:
    message = refusal(tmp_path, "cameras: " + "[" * 5000 + "]" * 5000 + "\n")
    assert f"nested more than {MAX_YAML_DEPTH} levels deep" in message
    assert "line 1" in message


def test_an_alias_bomb_is_refused_fast_and_says_why(tmp_path: Path) -> None:
    started = time.monotonic()
    message = refusal(tmp_path, billion_laughs())  # 10**9 values once expanded
    assert time.monotonic() - started < 5.0  # it took 37 s and more before
    assert "once its aliases (*name) are expanded" in message


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    assert "recursive alias" in refusal(tmp_path, "cameras: &loop\n  front: *loop\n")


def test_ordinary_anchors_and_merge_keys_keep_working(tmp_path: Path) -> None:
    text = (
        "cameras:\n"
        "  front: &cam\n"
        "    source: go2rtc:front\n"
        "    protect: [face]\n"
        "    output: &out {fps: 10, height: 720}\n"
        "  back:\n"
        "    <<: *cam\n"
        "    source: go2rtc:back\n"  # an explicit key next to a merge overrides it: not a duplicate
        "    output: {<<: *out, name: back_private}\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.cameras["back"].protect == ["face"]
    assert config.cameras["back"].source == "go2rtc:back"
    assert config.cameras["back"].output.fps == 10
    assert config.cameras["back"].output.name == "back_private"


@pytest.mark.parametrize(
    ("text", "key", "line", "first"),
    [
        ("log_level: info\nmodels_dir: m\nlog_level: debug\n", "'log_level'", 3, 1),
        ("cameras:\n  front:\n    source: go2rtc:a\n    source: go2rtc:b\n", "'source'", 4, 3),
        ("cameras:\n  front: {source: 'go2rtc:a'}\n  front: {source: 'go2rtc:b'}\n", "'front'", 3, 2),
    ],
)
def test_duplicate_keys_are_refused_naming_the_key_and_line(
    tmp_path: Path, text: str, key: str, line: int, first: int
) -> None:
    message = refusal(tmp_path, text)
    assert f"line {line}: duplicate key {key} (already set on line {first})" in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cameras: [1, 2\n", r"not valid YAML: line 2, column 1: while parsing a flow sequence"),
        ("port: " + "9" * 5000 + "\n", "not valid YAML: Exceeds the limit"),
        ("date: 2024-13-45\n", "not valid YAML: month must be in 1..12"),
    ],
)
def test_yaml_errors_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    assert message in refusal(tmp_path, text)


# --- values ------------------------------------------------------------------------------------------


def camera(**fields: Any) -> dict[str, Any]:
    return {"cameras": {"front": {"source": "go2rtc:front", **fields}}}


@pytest.mark.parametrize(
    ("data", "key"),
    [
        (camera(output={"fps": math.inf}), "cameras.front.output.fps"),
        (camera(output={"fps": math.nan}), "cameras.front.output.fps"),
        (camera(zones=[{"name": "z", "points": [[0, 0], [math.nan, 0], [1, 1]]}]), "cameras.front.zones.0.points.1.0"),
        ({"privacy": {"hold_s": math.nan}}, "privacy.hold_s"),
        ({"anonymize": {"margin": -math.inf}}, "anonymize.margin"),
        ({"detection": {"face": {"model": "centerface", "threshold": math.nan}}}, "detection.face.threshold"),
        ({"go2rtc": {"reconcile_s": math.inf}}, "go2rtc.reconcile_s"),
        ({"mqtt": {"update_interval_s": math.nan}}, "mqtt.update_interval_s"),
        ({"server": {"job_ttl_s": math.inf}}, "server.job_ttl_s"),
    ],
)  # fmt: skip
def test_numbers_that_are_not_finite_are_refused_as_such(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(data)
    assert str(error.value) == f"{key}: Input should be a finite number"


def test_output_fps_has_a_floor_of_one_frame_per_second() -> None:
    # 5e-324 fps was accepted (gt=0) and crashed the camera's thread computing a frame interval.
    for fps in (5e-324, 0.5):
        with pytest.raises(
            ConfigError, match=r"^cameras\.front\.output\.fps: Input should be greater than or equal to 1"
        ):
            parse_config(camera(output={"fps": fps}))
    assert parse_config(camera(output={"fps": 1})).cameras["front"].output.fps == 1


def test_yaml_inf_and_nan_spellings_are_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, "cameras:\n  front:\n    source: go2rtc:front\n    output: {fps: .inf}\n")
    assert message == "cameras.front.output.fps: Input should be a finite number"
    assert refusal(tmp_path, "privacy: {hold_s: .nan}\n") == "privacy.hold_s: Input should be a finite number"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("gopher://cam/x", "'gopher://cam/x' is not understood"),
        ("front", "'front' is not understood"),
        ("RTSP://cam/x", "is not understood"),
        ("go2rtc:", "'go2rtc:' needs a stream name"),
        ("file:", "'file:' needs a path"),
        ("rtsp:///stream", "has no host"),
        ("http://cam:port/x", "this http:// URL is not valid: its host or port cannot be read"),
        ("rtsp://cam/my stream", "contains a blank"),
        (" rtsp://cam/x", "starts or ends with a blank"),
        ("go2rtc:front\nINFO fake log line", "control character"),
        ("/dev/video", "is not understood"),
        ("gopher://admin:hunter2@cam/x", "'gopher://***@cam/x' is not understood"),
        ("rtsp://admin:hunter2/x@cam/x", "this rtsp:// URL is not valid"),  # a '/' in the password
    ],
)
def test_a_source_of_no_known_form_is_refused_naming_the_key(source: str, message: str) -> None:
    for key in ("source", "detect_source"):
        data = camera(**{key: source}) if key == "source" else camera(detect_source=source)
        with pytest.raises(ConfigError) as error:
            parse_config(data)
        assert str(error.value).startswith(f"cameras.front.{key}: "), error.value
        assert message in str(error.value)
        assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(
    "source",
    [
        "go2rtc:front door",
        "rtsp://cam:554/stream1",
        "rtsps://user:${PW}@cam/x",
        "http://cam/video.mjpg",
        "https://[fe80::1]:8443/x.ts?token=a",
        "file:/media/clip with blanks.mp4",
        "/dev/video0",
    ],
)
def test_every_documented_source_form_validates_without_io(source: str) -> None:
    # file: is not checked for existence here: that is I/O, done by preflight.
    assert parse_config(camera(source=source)).cameras["front"].source == source


@pytest.mark.parametrize(
    "cameras",
    [
        {"porch": {"source": "rtsp://go2rtc:8554/front", "output": {"name": "front"}}},
        {"cam": {"source": "rtsps://10.0.0.5/live/stream1/", "output": {"name": "stream1"}}},
        {"cam": {"source": "rtsp://10.0.0.5/cam", "detect_source": "rtsp://10.0.0.5/sub",
                 "output": {"name": "sub"}}},
        {"a": {"source": "rtsp://go2rtc:8554/b_anon"}, "b": {"source": "go2rtc:b"}},
    ],
)  # fmt: skip
def test_an_output_never_takes_the_stream_name_of_an_rtsp_source(cameras: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"output\.name: '\w+' is a source stream name"):
        parse_config({"cameras": cameras})


def test_an_rtsp_source_with_a_distinct_output_name_is_accepted() -> None:
    config = parse_config({"cameras": {"front": {"source": "rtsp://go2rtc:8554/front?video"}}})
    assert config.cameras["front"].output.name is None  # front_anon


@pytest.mark.parametrize("password", ["", "   ", None])
def test_a_web_user_without_a_password_is_refused(password: str | None) -> None:
    with pytest.raises(ConfigError, match=r"^server\.users\.ann\.password: must not be empty"):
        parse_config({"server": {"users": {"ann": {"password": password}}}})


def test_a_web_user_whose_password_env_is_empty_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, "server:\n  users:\n    ann:\n      password: ${NOT_SET_ANYWHERE:-}\n")
    assert "server.users.ann.password: must not be empty" in message


@pytest.mark.parametrize("key", ["token", "stream_token"])
def test_server_tokens_shorter_than_16_characters_are_refused(key: str) -> None:
    for short in ("", "x", "a" * (MIN_TOKEN_LENGTH - 1)):
        with pytest.raises(ConfigError, match=rf"^server\.{key}: must be at least 16 characters"):
            parse_config({"server": {key: short}})
    config = parse_config({"server": {key: "a" * MIN_TOKEN_LENGTH}})
    assert getattr(config.server, key).get_secret_value() == "a" * MIN_TOKEN_LENGTH


def test_a_token_from_an_unset_env_with_empty_default_means_no_token(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "server:\n  token: ${NOT_SET_ANYWHERE:-}\n"))
    assert config.server.token is None


def test_a_short_token_is_not_echoed(tmp_path: Path) -> None:
    assert "tiny-secret" not in refusal(tmp_path, "server:\n  token: tiny-secret\n")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"server": {"allowed_hosts": ["http://cam.example"]}}, "server.allowed_hosts: 'http://cam.example' is not"),
        ({"server": {"allowed_hosts": ["cam.example:8080"]}}, "server.allowed_hosts: 'cam.example:8080' is not"),
        ({"server": {"allowed_hosts": [""]}}, "server.allowed_hosts: '' is not a host name"),
        ({"server": {"media_dirs": [""]}}, "server.media_dirs: a folder must not be empty"),
    ],
)  # fmt: skip
def test_server_lists_hold_what_they_are_for(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(data)
    assert message in str(error.value)


def test_allowed_hosts_take_names_and_addresses() -> None:
    hosts = ["deid.lan", "192.168.1.10", "fe80::1", "my_host"]
    assert parse_config({"server": {"allowed_hosts": hosts}}).server.allowed_hosts == hosts


# --- inline passwords: a warning, not a refusal ------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "warned"),
    [
        ("source: rtsp://admin:hunter2@10.0.0.5/stream", True),
        ("source: rtsp://admin:${CAM_PW:-hunter2}@10.0.0.5/stream", True),
        ("source: http://admin:hunter2@10.0.0.5/video.mjpg", True),
        ("source: rtsp://admin:${CAM_PW}@10.0.0.5/stream", False),
        ("source: rtsp://admin@10.0.0.5/stream", False),
        ("source: rtsp://10.0.0.5/stream", False),
    ],
)
def test_a_password_written_in_a_source_url_is_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, line: str, warned: bool
) -> None:
    monkeypatch.setenv("CAM_PW", "from-env")
    with caplog.at_level(logging.WARNING, logger="deid_sidecar.config"):
        config = load_config(write(tmp_path, f"cameras:\n  front:\n    {line}\n"))
    assert config.cameras["front"].source  # loaded: a warning, not a refusal
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if not warned:
        assert warnings == []
        return
    assert len(warnings) == 1
    assert warnings[0].startswith("cameras.front.source: ")
    assert "${NAME}" in warnings[0]
    assert "hunter2" not in warnings[0]


# --- preflight: the checks that touch the file system ------------------------------------------------


def test_preflight_refuses_a_file_source_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "missing.mp4"
    config = parse_config(camera(source=f"file:{missing}"))  # validation itself does no I/O
    with pytest.raises(ConfigError, match=rf"^cameras\.front\.source: file {missing} does not exist$"):
        preflight(config)


def test_preflight_names_every_missing_file(tmp_path: Path) -> None:
    clip = write(tmp_path, b"\x00", "clip.mp4")
    config = parse_config(
        {
            "cameras": {
                "a": {"source": f"file:{clip}", "detect_source": f"file:{tmp_path / 'sub.mp4'}"},
                "b": {"source": f"file:{tmp_path}"},  # a folder is not a file
            },
            "anonymize": {"replace_sources": str(tmp_path / "faces")},
            "mqtt": {"enabled": True, "tls": True, "ca_file": str(tmp_path / "ca.pem")},
        }
    )
    with pytest.raises(ConfigError) as error:
        preflight(config)
    problems = str(error.value).split("; ")
    assert [problem.split(":")[0] for problem in problems] == [
        "cameras.a.detect_source",
        "cameras.b.source",
        "mqtt.ca_file",
        "anonymize.replace_sources",
    ]


def test_preflight_accepts_files_that_exist(tmp_path: Path) -> None:
    clip = write(tmp_path, b"\x00", "clip.mp4")
    preflight(parse_config(camera(source=f"file:{clip}")))
