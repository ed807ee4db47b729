"""onnxruntime sessions: explicit providers, quiet threads, one shared session per model and settings."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from deid_sidecar.errors import UserError

log = logging.getLogger(__name__)

# A privacy product phones nowhere: onnxruntime's usage telemetry (ETW on Windows; 1.32 also tries to
# persist a device id elsewhere) is off before any session exists.
ort.disable_telemetry_events()

#: Config names -> onnxruntime provider names.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    # Intel iGPUs (and CPUs): only in PyPI's onnxruntime-openvino, the `openvino` extra.
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}

_SessionKey = tuple[str, tuple[str, ...], int]
_sessions: dict[_SessionKey, Any] = {}
_lock = threading.Lock()


def resolve_providers(wanted: Sequence[str], available: Sequence[str]) -> list[str]:
    """Wanted providers that this onnxruntime build has, in preference order.

    Always an explicit list: left to itself onnxruntime may list Azure first. The CPU provider is added
    last so a missing GPU degrades to slow rather than to nothing.
    """
    unknown = [name for name in wanted if name not in PROVIDERS]
    if unknown:
        raise UserError(f"unknown execution provider(s) {unknown} (known: {', '.join(PROVIDERS)})")
    chosen = [PROVIDERS[name] for name in wanted if PROVIDERS[name] in available]
    if PROVIDERS["cpu"] not in chosen:
        chosen.append(PROVIDERS["cpu"])
    return chosen


def openvino_device() -> str:
    """OpenVINO's device: the Intel GPU when it sees one, else the CPU (a device it does not see,
    "AUTO:GPU,CPU" included, makes the provider fail to start)."""
    try:  # only onnxruntime-openvino has this, in its binding module
        from onnxruntime.capi import _pybind_state

        devices = list(_pybind_state.get_available_openvino_device_ids())
    except (ImportError, AttributeError):
        return "CPU"
    return "GPU" if any(str(d).startswith("GPU") for d in devices) else "CPU"


def runs_on_cpu(wanted: Sequence[str]) -> bool:
    """True when the first provider that sessions get for `wanted` is onnxruntime's own CPU one."""
    return resolve_providers(wanted, ort.get_available_providers())[0] == PROVIDERS["cpu"]


def uses_gpu(wanted: Sequence[str]) -> bool:
    """True when the first provider that sessions get for `wanted` is an NVIDIA GPU's."""
    first = resolve_providers(wanted, ort.get_available_providers())[0]
    return first in (PROVIDERS["tensorrt"], PROVIDERS["cuda"])


def session_options(threads: int) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.inter_op_num_threads = 1
    # Spinning threads burn the cores other sessions need: several models on 2 cores went 4.1 -> 7.6 fps.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Memory patterns are kept per input shape, and the zoomed looks (detect/zoom.py) bring a new shape
    # for every crop size: off, face + plate inference took 261 MB instead of 337 MB at the same speed.
    options.enable_mem_pattern = False
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    return options


def create_session(path: Path, providers: Sequence[str], threads: int = 0) -> Any:
    """A new InferenceSession for `path` with the preferred available providers."""
    chosen = resolve_providers(providers, ort.get_available_providers())
    with_options = [
        (p, {"device_type": openvino_device()}) if p == PROVIDERS["openvino"] else p for p in chosen
    ]
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=with_options
        )
    except Exception as exc:  # onnxruntime raises its own exception types for bad or missing files
        raise UserError(f"cannot load model {path}: {str(exc).splitlines()[0]}") from None
    log.info("%s: running on %s", path.name, session.get_providers()[0])
    return session


def shared_session(path: Path, providers: Sequence[str], threads: int = 0) -> Any:
    """One session per (model, providers, threads) for the whole process, so cameras share it.

    onnxruntime sessions are safe to call from several threads.
    """
    key: _SessionKey = (str(path.resolve()), tuple(providers), threads)
    with _lock:
        session = _sessions.get(key)
        if session is None:
            session = create_session(path, providers, threads)
            _sessions[key] = session
        return session


def clear_sessions() -> None:
    """Forget cached sessions (tests, model reloads)."""
    with _lock:
        _sessions.clear()
