"""The command line: bad input gets one clear line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deid_sidecar.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["file", "nope.mp4", "-o", "out.mp4"], "input nope.mp4 does not exist"),
        (
            ["file", "pyproject.toml", "-o", "/tmp/x.mp4"],
            "pyproject.toml (is not a readable video|has no video stream)",
        ),
        (
            ["file", "a.mp4", "-o", "b.mp4", "--method", "smudge"],
            r"argument --method: invalid choice: 'smudge'",
        ),
        (["file", "a.mp4", "-o", "b.mp4", "--protect", "faces"], "--protect: unknown kind faces"),
        (["file", "a.mp4", "-o", "b.mp4", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["image", "nope.png", "-o", "out.png"], "input nope.png does not exist"),
        (["check-config", "nope.yml"], "cannot read config file nope.yml"),
        (["models", "fetch", "no-such-model"], "unknown model 'no-such-model'"),
        (["run", "-c", "config.example.yml", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_invalid_config_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text("cameras:\n  front:\n    source: go2rtc:front\n    output:\n      fps: 90\n")
    result = cli("check-config", str(config))
    assert result.returncode == 2
    assert "cameras.front.output.fps: Input should be less than or equal to 60" in result.stderr


def _bomb() -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


CAMERA = "cameras:\n  front:\n    source: go2rtc:front\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", r"c\.yml: not a text file \(byte 0 is not UTF-8\)"),
        ("cameras: " + "[" * 5000 + "]" * 5000, r"c\.yml: line 2: values are nested more than 32 levels deep"),
        (_bomb(), r"c\.yml: line \d+: more than 100000 values once its aliases \(\*name\) are expanded"),
        ("cameras: [1, 2", r"c\.yml: not valid YAML: line \d+, column \d+: while parsing a flow sequence"),
        (CAMERA + "    protect: [face]\n    protect: [license_plate]\n",
         r"c\.yml: line 6: duplicate key 'protect' \(already set on line 5\)"),
        ("cameras:\n  front:\n    source: gopher://admin:hunter2@cam/x\n",
         r"cameras\.front\.source: 'gopher://\*\*\*@cam/x' is not understood"),
        ("cameras:\n  front:\n    source: ''\n", r"cameras\.front\.source: must not be empty"),
        ("cameras:\n  front:\n    source: file:/nonexistent/clip.mp4\n",
         r"cameras\.front\.source: file /nonexistent/clip\.mp4 does not exist"),
        ("cameras:\n  porch:\n    source: rtsp://go2rtc:8554/front\n    output: {name: front}\n",
         r"cameras\.porch\.output\.name: 'front' is a source stream name"),
        (CAMERA + "server:\n  token: short-token\n", r"server\.token: must be at least 16 characters"),
        (CAMERA + "server:\n  users:\n    ann: {password: ''}\n", r"server\.users\.ann\.password: must not be empty"),
    ],
    ids=["binary", "deep", "alias-bomb", "syntax", "duplicate", "scheme", "empty-source", "missing-file",
         "rtsp-shadow", "short-token", "empty-password"],
)  # fmt: skip
def test_run_refuses_exactly_what_check_config_refuses(
    tmp_path: Path, content: str | bytes, message: str
) -> None:
    config = tmp_path / "c.yml"
    if isinstance(content, bytes):
        config.write_bytes(content)
    else:
        # No models: should a bad config ever be accepted, `run` stops at once instead of serving.
        config.write_text(f"models_dir: {tmp_path / 'no-models'}\n{content}\n")
    errors = []
    for args in (["check-config", str(config)], ["run", "-c", str(config)]):
        result = cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert re.search(message, result.stderr), result.stderr
        assert "hunter2" not in result.stderr
        errors.append(result.stderr)
    assert errors[0] == errors[1]


def test_an_inline_source_password_is_a_warning_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text("cameras:\n  front:\n    source: rtsp://admin:hunter2@10.0.0.5/stream\n")
    result = cli("check-config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"{config}: valid (1 cameras)" in result.stdout
    assert re.search(r"WARNING deid_sidecar\.config: cameras\.front\.source: rtsp://\*\*\*@10\.0\.0\.5/stream has "
                     r"its password written in the config file; put it in an environment variable", result.stderr)  # fmt: skip
    assert "hunter2" not in result.stderr + result.stdout


def test_an_error_line_is_one_line_with_credentials_masked() -> None:
    from deid_sidecar.cli import error_line
    from deid_sidecar.errors import UserError

    line = error_line(UserError("cannot open rtsp://admin:hunter2@cam/x?token=abc\n  401 Unauthorized\n"))
    assert line == "deid-sidecar: error: cannot open rtsp://***@cam/x?token=*** 401 Unauthorized"


def test_run_without_models_says_how_to_fetch(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text(f"models_dir: {tmp_path / 'empty'}\ncameras:\n  front:\n    source: go2rtc:front\n")
    result = cli("run", "-c", str(config))
    assert result.returncode == 2
    assert "deid-sidecar models fetch centerface" in result.stderr


def test_go2rtc_yaml_prints_the_anonymized_stream_and_no_secret(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text(
        "go2rtc:\n  password: hunter2\n  username: admin\n"
        "cameras:\n  front:\n    source: rtsp://admin:hunter2@10.0.0.5/stream\n"
    )
    result = cli("go2rtc-yaml", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "front_anon" in result.stdout
    assert "hunter2" not in result.stdout


def test_go2rtc_yaml_needs_no_secret_from_the_environment(tmp_path: Path) -> None:
    """It never prints one, so a config whose tokens come from ${VAR} prints without them set."""
    config = tmp_path / "c.yml"
    config.write_text(
        "server:\n  token: ${DEID_TEST_UNSET_API_TOKEN}\n  stream_token: ${DEID_TEST_UNSET_STREAM_TOKEN}\n"
        "cameras:\n  front:\n    source: go2rtc:front\n"
    )
    for target in ("go2rtc", "frigate"):
        result = cli("go2rtc-yaml", "-c", str(config), "--for", target)
        assert result.returncode == 0, result.stderr
        assert "front_anon" in result.stdout and "unset-environment-variable" not in result.stdout
        assert "TOKEN}" in result.stdout  # the stream token, as a reference for go2rtc or Frigate


def test_config_docs_match_the_committed_reference() -> None:
    result = cli("config-docs")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "docs" / "config.md").read_text()
