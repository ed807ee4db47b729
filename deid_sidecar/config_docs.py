"""Render the configuration reference (docs/config.md) from the pydantic models.

The models are the only source of truth; CI regenerates this file and fails when it differs.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, get_args, get_origin

from annotated_types import Ge, Gt, Le, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from deid_sidecar.config import CameraConfig, Config


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(f"`{member.value}`" for member in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if origin is None:
        return getattr(annotation, "__name__", str(annotation))
    if str(origin) == "typing.Literal":
        return " \\| ".join(f"`{arg}`" for arg in args)
    inner = [_type_name(arg) for arg in args if arg is not type(None)]
    if origin in (list, tuple):
        return f"list of {', '.join(dict.fromkeys(inner))}"
    if origin is dict:
        return f"map of {inner[-1]}"
    optional = " (optional)" if type(None) in args else ""
    return " \\| ".join(inner) + optional


def _default(field: FieldInfo, instance: BaseModel | None, name: str) -> str:
    if instance is not None:
        value = getattr(instance, name)
        if isinstance(value, BaseModel):
            return "see section"
    elif field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "see section"
    elif field.default is PydanticUndefined:
        return "**required**"
    else:
        value = field.default
    if isinstance(value, Enum):
        value = value.value
    if value is None:
        return "none"
    return f"`{json.dumps(value) if not isinstance(value, str) else value}`"


def _bounds(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        if isinstance(meta, Ge):
            parts.append(f">= {meta.ge}")
        if isinstance(meta, Gt):
            parts.append(f"> {meta.gt}")
        if isinstance(meta, Le):
            parts.append(f"<= {meta.le}")
        if isinstance(meta, MinLen) and meta.min_length:
            parts.append(f"at least {meta.min_length} item(s)")
        if isinstance(meta, MaxLen):
            parts.append(f"at most {meta.max_length}")
    return ", ".join(parts)


Nested = list[tuple[str, type[BaseModel], BaseModel | None]]


def _section(
    path: str, model: type[BaseModel], instance: BaseModel | None, out: list[str], nested: Nested
) -> None:
    """One table; `instance` holds the defaults as the parent section builds them."""
    out.append(f"## `{path}`\n" if path else "## Top level\n")
    if model.__doc__ and path:
        out.append(model.__doc__.strip().splitlines()[0] + "\n")
    out.append("| option | type | default | bounds | description |")
    out.append("| --- | --- | --- | --- | --- |")
    for name, field in model.model_fields.items():
        annotation = field.annotation
        out.append(
            f"| `{name}` | {_type_name(annotation)} | {_default(field, instance, name)} | {_bounds(field)} | "
            f"{field.description or ''} |"
        )
        child = _model_in(annotation)
        if child is not None and child is not CameraConfig:
            child_defaults = getattr(instance, name) if instance is not None else _defaults_of(field)
            nested.append((f"{path}.{name}" if path else name, child, child_defaults))
    out.append("")


def _defaults_of(field: FieldInfo) -> BaseModel | None:
    if field.default_factory is None:
        return None
    value = field.default_factory()  # type: ignore[call-arg]
    return value if isinstance(value, BaseModel) else None


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def render_config_reference() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from `deid_sidecar/config.py` by `deid-sidecar config-docs`; do not edit by hand.",
        "Unknown options are errors. Any value may reference an environment variable as `${NAME}` or",
        "`${NAME:-default}` (use this for passwords and tokens).",
        "",
    ]
    queue: Nested = [("", Config, Config())]
    while queue:
        path, model, instance = queue.pop(0)
        nested: Nested = []
        _section(path, model, instance, out, nested)
        queue[0:0] = nested
    camera_nested: Nested = []
    _section("cameras.<name>", CameraConfig, None, out, camera_nested)
    for path, model, instance in camera_nested:
        _section(path, model, instance, out, [])
    return "\n".join(out).rstrip() + "\n"
