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


def test_config_docs_match_the_committed_reference() -> None:
    result = cli("config-docs")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "docs" / "config.md").read_text()
