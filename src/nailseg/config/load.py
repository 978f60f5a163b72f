"""From a YAML file (or a dict) and overrides to a validated :class:`Experiment`."""

from __future__ import annotations

import os
from typing import Any

from pydantic import ValidationError

from nailseg.config.experiment import Experiment
from nailseg.config.families import model_section
from nailseg.config.messages import format_errors, refuse_replaced_keys
from nailseg.config.overrides import parse_overrides, set_dotted
from nailseg.config.yaml_io import check_expansion, read_config_file
from nailseg.errors import ConfigError


def experiment_from_dict(raw: dict[str, Any], source: str = "config",
                         overrides: dict[str, str] | None = None) -> Experiment:
    """Validate ``raw``; every bad key is one line naming where it came from: ``source`` (the file),
    or the override that set it (``overrides``: dotted key -> the ``key=value`` as typed)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (data:, model:, ...)")
    check_expansion(raw, source)
    refuse_replaced_keys(raw, source)
    try:
        model, errors = model_section(raw.get("model", {}))
        if errors:  # the other sections are still checked, so one run reports every bad key
            try:
                Experiment.model_validate({k: v for k, v in raw.items() if k != "model"})
            except ValidationError as err:
                errors += [e for e in err.errors() if e["loc"]]  # not the stack checks of a default model
            raise ConfigError(format_errors(errors, source, overrides))
        return Experiment.model_validate({**raw, "model": model})
    except ValidationError as err:
        raise ConfigError(format_errors(err.errors(), source, overrides)) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deep to validate") from None


def load_experiment(path: str | os.PathLike[str] | None, overrides: list[str] | None = None) -> Experiment:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = read_config_file(path) if path is not None else {}
    source = str(path) if path is not None else "defaults"
    typed: dict[str, str] = {}
    for item, (key, value) in zip(overrides or [], parse_overrides(overrides or [])):
        set_dotted(raw, key, value)
        typed.pop(key, None)  # the last one of a key wins, as in raw, and is searched first
        typed[key] = item.strip()
    return experiment_from_dict(raw, source, typed)
