"""Write runtime camera settings back into the config file the server was started with.

The ORIGINAL YAML is loaded without `${ENV}` substitution and only the changed camera keys are
updated, so secrets stay as references and are never written in clear. The result is validated
(with the environment substituted, as at start-up) before it atomically replaces the file; the
previous version is kept as `<file>.bak`. Comments in the file are not preserved (PyYAML drops them).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from deid_sidecar.config import Config, load_config_text, preflight
from deid_sidecar.engine.settings import SettingsValues
from deid_sidecar.errors import ConfigError


def _camera_changes(name: str, settings: SettingsValues, config: Config) -> dict[str, Any]:
    """Keys of `cameras.<name>` whose runtime value differs from the loaded config."""
    if settings.raw_source is not None:  # added at runtime: the whole entry
        return {
            "source": settings.raw_source,
            "protect": list(settings.protect),
            "method": settings.method.value,
            "output": {"fps": settings.fps, **({"height": settings.height} if settings.height else {})},
        }
    camera = config.cameras[name]
    changes: dict[str, Any] = {}
    if settings.method != (camera.method or config.anonymize.method):
        changes["method"] = settings.method.value
    if sorted(settings.protect) != sorted(camera.protect):
        changes["protect"] = list(settings.protect)
    output: dict[str, Any] = {}
    if settings.fps != camera.output.fps:
        output["fps"] = settings.fps
    if settings.height != camera.output.height:
        output["height"] = settings.height
    if output:
        changes["output"] = output
    if list(settings.zones) != list(camera.zones):  # changed over MQTT
        changes["zones"] = [zone.model_dump(mode="json") for zone in settings.zones]
    return changes


def _merge(entry: dict[str, Any], changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(entry.get(key), dict):
            _merge(entry[key], value)
        else:
            entry[key] = value


def save_settings(path: Path, config: Config, settings: Mapping[str, SettingsValues]) -> list[str]:
    """Update `path` in place (blocking: run in an executor); returns the cameras whose entry changed."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path.name}: {exc}") from None
    cameras = data.setdefault("cameras", {})
    changed = []
    for name, camera_settings in settings.items():
        changes = _camera_changes(name, camera_settings, config)
        if changes:
            _merge(cameras.setdefault(name, {}), changes)
            changed.append(name)
    if not changed:
        return []
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    # Refuse to write a file that would not start: check exactly as `run -c` would.
    preflight(load_config_text(text, path.name))
    _write_atomic(path, text)
    return changed


def _write_atomic(path: Path, text: str) -> None:
    if path.exists():
        shutil.copy2(path, path.with_name(path.name + ".bak"))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        if path.exists():
            shutil.copymode(path, tmp)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
