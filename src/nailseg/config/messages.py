"""Validation errors as one line per bad key, with the nearest valid key for a typo."""

from __future__ import annotations

import difflib
import re
from typing import Any

from pydantic import BaseModel

from nailseg.config.experiment import Experiment
from nailseg.config.families import MODEL_CLASSES
from nailseg.config.yaml_io import clip, preview
from nailseg.errors import ConfigError
from nailseg.specs import PIPELINES

# Keys that an earlier release had and one key now replaces: refused with one line naming it.
REPLACED_KEYS = {
    ("loader",): "data.pipeline",
    ("augment", "device"): "data.pipeline",
    ("augment", "engine"): "data.pipeline",
}


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _valid_keys(ann, prefix + name + ".")
    for family_cls in MODEL_CLASSES.values() if model is Experiment else ():
        keys += [f"model.{k}" for k in family_cls.model_fields if f"model.{k}" not in keys]
    return keys


def _source_of(key: str, source: str, overrides: dict[str, str] | None) -> str:
    """Where ``key``'s value came from: the override that set it (or a section above it), else the file."""
    for given, text in reversed((overrides or {}).items()):  # the latest override that set it
        if key == given or key.startswith(given + "."):
            return f"{clip(text)} (override of {source})"
    return source


def format_errors(errors: list[dict[str, Any]], source: str, overrides: dict[str, str] | None = None) -> list[str]:
    valid = _valid_keys(Experiment)
    tags = _UNION_TAGS | set(MODEL_CLASSES)
    lines, seen = [], set()
    for e in errors:
        parts = [p for p in e["loc"] if not (isinstance(p, str) and (p in tags or _TYPE_TAG.match(p)))]
        key = ".".join(str(p) for p in parts)
        if e["type"] != "extra_forbidden":  # a union gives one error per member: report the key once
            if key in seen:
                continue
            seen.add(key)
        family = next((p for p in e["loc"] if isinstance(p, str) and p in MODEL_CLASSES), None)
        where = _source_of(key, source, overrides)  # the file, or the override that set the key
        if e["type"] == "extra_forbidden":
            if family is not None and key.startswith("model."):
                keys = ", ".join(MODEL_CLASSES[family].model_fields)
                msg = f"{where}: unknown key '{clip(key)}' for model.family {family} (its keys: {keys})"
            else:
                hint = difflib.get_close_matches(key, valid, n=1)
                msg = f"{where}: unknown key '{clip(key)}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
        elif e["type"] == "value_error" and _NAMED_REFUSAL.match(_refusal(e)):
            refusal = _refusal(e)  # a cross-key refusal names its own key: blamed on what set that key
            msg = f"{_source_of(refusal.split(':', 1)[0], source, overrides)}: {clip(refusal, 500)}"
        elif e["type"] == "union_tag_invalid" and key == "model":
            where = _source_of("model.family", source, overrides)
            msg = f"{where}: model.family: must be one of {', '.join(MODEL_CLASSES)} (got {preview(e.get('input'))})"
        else:
            msg = f"{where}: {key or 'config'}: {preview(e['msg'], 200)} (got {preview(e.get('input'))})"
        lines.append(msg)
    return lines


_NAMED_REFUSAL = re.compile(r"^[a-z_]+(\.[a-z_0-9]+)*: ")


def _refusal(e: dict[str, Any]) -> str:
    return str(e.get("msg", "")).removeprefix("Value error, ")


_TYPE_TAG = re.compile(r"^(constrained-|literal\[|function-|tuple\[|list\[|dict\[|int$|float$|str$|bool$|none$)")
_UNION_TAGS = {"hflip", "vflip", "affine", "random_resized_crop", "brightness_contrast",
               "hue_saturation", "gauss_noise", "blur"}


def refuse_replaced_keys(raw: dict[str, Any], source: str) -> None:
    for path, new in REPLACED_KEYS.items():
        node: Any = raw
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node:
            raise ConfigError(f"{source}: '{'.'.join(path)}' was replaced by '{new}' "
                              f"({', '.join(PIPELINES)})")
