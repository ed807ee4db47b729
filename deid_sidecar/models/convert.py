"""Conversions `fetch` applies to downloaded model files. Run at fetch time only, never while detecting."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from deid_sidecar.errors import UserError

#: The CPU build of this torch lies on the project's local pip index; plain `torch` would pull GBs of CUDA.
TORCH_PIN = "torch==2.13.0"
#: Recent enough for fastanpr's ultralytics 8.1 checkpoint; installed without its heavy dependencies.
ULTRALYTICS_PIN = "ultralytics==8.4.190"
#: What importing `ultralytics.nn.tasks` and the export check touch (no torchvision, matplotlib, polars).
EXPORT_DEPS = (
    "numpy",
    "opencv-python-headless<5",
    "pyyaml",
    "pillow",
    "psutil",
    "requests",
    "onnx",
    "onnxruntime",
)
#: torchvision release paired with TORCH_PIN; ultralytics reads its version at import.
TORCHVISION_STAND_IN_VERSION = "0.28.0"
EXPORT_TIMEOUT_S = 1800

#: TF Object Detection API graph -> ONNX: a tensorflow-cpu with Python 3.11 wheels that tf2onnx 1.17
#: was tried with on the person graph; onnx pinned because new onnx releases have broken tf2onnx before.
#: About 250 MB of wheels, under 2 minutes to install; the conversion and check take about 30 s.
TF_EXPORT_PINS = ("tensorflow-cpu==2.19.1", "tf2onnx==1.17.0", "onnx==1.22.0", "onnxruntime")

CENTERFACE_INPUT = "input.1"
#: CenterFace outputs: heatmap, scale, offset, landmarks (all at stride 4).
CENTERFACE_OUTPUTS = {"537": 1, "538": 2, "539": 2, "540": 10}


def centerface_symbolic_dims(src: Path, dest: Path) -> None:
    """Replace CenterFace's static 10x3x32x32 dims by symbolic N, H, W so any size runs."""
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load(str(src))
    _drop_initializer_inputs(model)
    inputs = {CENTERFACE_INPUT: ["N", 3, "H", "W"]}
    outputs = {name: ["N", channels, "h", "w"] for name, channels in CENTERFACE_OUTPUTS.items()}
    try:
        model = update_inputs_outputs_dims(model, inputs, outputs)
    except (ValueError, KeyError) as exc:
        raise UserError(f"cannot rewrite CenterFace dims: {exc}") from None
    onnx.save(model, str(dest))


def _drop_initializer_inputs(model: Any) -> None:
    """Drop weights listed as graph inputs (an old exporter's habit: it blocks constant folding and
    `update_inputs_outputs_dims` would want dims for each) and weights no node uses (BN counters)."""
    weights = {init.name for init in model.graph.initializer}
    kept = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    used = {name for node in model.graph.node for name in node.input}
    live = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(live)


def export_yolo(checkpoint: Path, dest: Path, scratch_root: Path) -> None:
    """Export an ultralytics .pt to ONNX inside a throw-away virtual environment that is deleted after."""
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_root, prefix="yolo-export-") as tmp:
        python = _make_export_env(Path(tmp) / "venv")
        script = Path(__file__).with_name("export_yolo.py")
        env = {**os.environ, "YOLO_CONFIG_DIR": str(Path(tmp) / "config"), "YOLO_OFFLINE": "1"}
        _run([str(python), str(script), str(checkpoint), str(dest)], "ONNX export", env)


def export_tf_detection(graph: Path, dest: Path, scratch_root: Path, check_image: Path) -> None:
    """Convert a TF Object Detection API frozen graph to ONNX in a throw-away virtual environment that
    is deleted after; the script compares TF and onnxruntime on `check_image` (a photo with people)."""
    import cv2
    import numpy as np

    from deid_sidecar.detect.adapters import TfObjectDetectionAdapter

    image = cv2.imread(str(check_image))
    if image is None:
        raise UserError(f"cannot read the check image {check_image.name}")
    # The adapter's own preprocessing, so the check sees what detection will feed the model.
    tensor, _meta = TfObjectDetectionAdapter().prepare(np.asarray(image, np.uint8), 0)
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_root, prefix="tf-export-") as tmp:
        check_input = Path(tmp) / "check.npy"
        np.save(check_input, tensor)
        venv = Path(tmp) / "venv"
        _run([sys.executable, "-m", "venv", str(venv)], "creating the export environment")
        python = venv / "bin" / "python"
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        _run([*pip, *TF_EXPORT_PINS], f"pip install {' '.join(TF_EXPORT_PINS[:2])}")
        script = Path(__file__).with_name("export_tf.py")
        # TF's info logs would bury the script's one-line failure, which `_run` reports as the last line.
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        _run(
            [str(python), str(script), str(graph), str(dest), str(check_input)], "TF -> ONNX conversion", env
        )


def _make_export_env(venv: Path) -> Path:
    _run([sys.executable, "-m", "venv", str(venv)], "creating the export environment")
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _run([*pip, TORCH_PIN, *EXPORT_DEPS], f"pip install {TORCH_PIN}")
    _run([*pip, "--no-deps", ULTRALYTICS_PIN], f"pip install {ULTRALYTICS_PIN}")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    _write_torchvision_stand_in(Path(purelib))
    return python


def _write_torchvision_stand_in(site_packages: Path) -> None:
    """PyPI torchvision does not load beside this CPU torch; ultralytics only reads its version and
    imports it for layers a detection checkpoint does not use, so an empty package with metadata does."""
    package = site_packages / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text(
        f'"""Stand-in for the ONNX export only."""\n__version__ = "{TORCHVISION_STAND_IN_VERSION}"\n'
    )
    info = site_packages / f"torchvision-{TORCHVISION_STAND_IN_VERSION}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: torchvision\nVersion: {TORCHVISION_STAND_IN_VERSION}\n"
    )
    (info / "RECORD").write_text("")


def run_tool(
    cmd: list[str],
    what: str,
    *,
    timeout: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Run a fetch/export tool; a failure is a one-line UserError with the tool's last line."""
    try:
        result = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"{what} failed: {exc}") from None
    if result.returncode != 0:
        raise UserError(f"{what} failed: {last_line(result.stderr or result.stdout)}")


def last_line(text: str) -> str:
    """The last meaningful line of a tool's output, for one-line error messages."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("WARNING")]
    return lines[-1] if lines else "(no output)"


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    run_tool(cmd, what, timeout=EXPORT_TIMEOUT_S, env=env)
