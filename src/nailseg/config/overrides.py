"""Dotted ``key=value`` overrides from the command line, typed as YAML scalars."""

from __future__ import annotations

from typing import Any

from nailseg.config.yaml_io import clip, preview, safe_yaml
from nailseg.errors import ConfigError


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {clip(dotted)}: '{clip(part)}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["trainer.max_epochs=3", "model.encoder=resnet18"]`` -> typed pairs (YAML scalars)."""
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {preview(item)}: expected key=value, e.g. trainer.max_epochs=3")
        value = safe_yaml(raw, f"override {clip(key.strip())}") if raw != "" else ""
        parsed.append((key.strip(), value))
    return parsed
