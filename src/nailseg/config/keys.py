"""Every key of the config with its type, default and description (``nailseg config keys``)."""

from __future__ import annotations

from pydantic import BaseModel

from nailseg.config.experiment import Experiment
from nailseg.config.families import MODEL_CLASSES
from nailseg.config.yaml_io import preview


def _type_name(annotation) -> str:
    text = str(annotation)
    for noise in ("typing.", "<class '", "'>", "nailseg.core.augment.", "pydantic.fields."):
        text = text.replace(noise, "")
    return text if len(text) <= 28 else text[:25] + "..."


def config_keys(family: str | None = None) -> list[dict[str, str]]:
    """Every key of the experiment config with its type, default and description (``nailseg config keys``)."""
    rows: list[dict[str, str]] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            inner = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            section = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else (inner[0] if inner else None)
            key = prefix + name
            if key == "model":
                for fam, cls in MODEL_CLASSES.items():
                    if family in (None, fam):
                        walk(cls, f"model[{fam}].")
                continue
            if section is not None and key != "augment.train":
                walk(section, key + ".")
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump(mode="json")
            if isinstance(default, list):
                default = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in default]
            rows.append({"key": key, "type": _type_name(ann), "default": preview(default, 60),
                         "description": field.description or ""})

    walk(Experiment, "")
    return rows
