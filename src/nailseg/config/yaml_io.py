"""Reading YAML safely: unique keys, bounded depth and expansion, one ``ConfigError`` per problem."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from nailseg.errors import ConfigError

PREVIEW_CHARS = 80
MAX_CONFIG_NODES = 20_000  # a real config has a few hundred; YAML alias bombs expand to billions


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """A short repr for error messages: never expands a huge (or alias-bombed) value."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple, r.maxstring, r.maxother = 3, 6, 6, 6, limit, limit
    text = r.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int = PREVIEW_CHARS) -> str:
    """A plain string cut to ``limit`` characters for an error message."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_expansion(tree: Any, source: str, budget: int = MAX_CONFIG_NODES) -> None:
    """Refuse a loaded YAML tree whose expansion (aliases followed) exceeds ``budget`` nodes.

    PyYAML shares aliased nodes, so loading is cheap, but anything that walks the tree
    (validation, printing) pays for every expanded copy: count before walking, with a budget.
    """
    seen = 0
    stack = [tree]
    while stack:
        node = stack.pop()
        seen += 1
        if seen > budget:
            raise ConfigError(f"{source}: expands to more than {budget} values (YAML aliases nested too deep?)")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would silently keep
    the last one, so half of a config could be ignored without a word)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: let the constructor report it
            break
        if duplicate:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {preview(key)} (line {mark.line + 1})",
                                                    mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
MAX_YAML_DEPTH = 64  # a real config nests 4 levels; 500 nested brackets exhaust Python's recursion


def _too_deep(text: str) -> bool:
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    indent = max((len(line) - len(line.lstrip(" ")) for line in text.splitlines() if line.strip()), default=0)
    return deepest > MAX_YAML_DEPTH or indent > 2 * MAX_YAML_DEPTH * 4


def _load_unique(text: str) -> Any:
    """What ``yaml.safe_load`` does, with :class:`_UniqueKeyLoader` (a SafeLoader: no Python objects)."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def safe_yaml(text: str, source: str) -> Any:
    if _too_deep(text):
        raise ConfigError(f"{source}: nested more than {MAX_YAML_DEPTH} levels deep (a config nests a few)")
    try:
        loaded = _load_unique(text)
    except RecursionError:
        raise ConfigError(f"{source}: nested too deep to read (a config nests a few levels)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML ({preview(str(err).splitlines()[0] if str(err) else err, 120)})") from None
    check_expansion(loaded, source)
    return loaded


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file; every way it can be unreadable is one ``ConfigError`` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a YAML config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (is it a YAML config?)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    loaded = safe_yaml(text, str(path))
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, model:, ...)")
    return loaded
