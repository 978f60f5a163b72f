"""The model family registry: ``model.family`` -> its config class. A plugin stack registers its
own family here (next to :func:`nailseg.specs.register_stack`)."""

from __future__ import annotations

from typing import Any, Union, get_args

from pydantic import ValidationError

from nailseg.config.model import MaskrcnnModel, SegformerModel, SmModel, SmpModel, UpernetModel, _ModelBase
from nailseg.specs import load_plugins

ModelConfig = Union[SmpModel, UpernetModel, SegformerModel, SmModel, MaskrcnnModel]  # the built-in families
MODEL_CLASSES: dict[str, type[_ModelBase]] = {}


def register_family(cls: type[_ModelBase]) -> type[_ModelBase]:
    """Add a ``model.family`` (its class declares ``family: Literal["name"]``). A plugin stack calls
    this for its own family, next to :func:`nailseg.specs.register_stack`."""
    (family,) = get_args(cls.model_fields["family"].annotation)
    MODEL_CLASSES[family] = cls
    return cls


for _cls in (SmpModel, UpernetModel, SegformerModel, SmModel, MaskrcnnModel):
    register_family(_cls)


def model_section(raw: Any) -> tuple[_ModelBase | None, list[dict[str, Any]]]:
    """The ``model:`` section as its family's class, or the errors (in pydantic's shape, located
    under ``model.<family>``) that say why not. Families are a registry, so the section is
    dispatched here rather than by a fixed union."""
    if isinstance(raw, _ModelBase):
        return raw, []
    if not isinstance(raw, dict):
        return None, [{"type": "model_type", "loc": ("model",), "msg": "must be a mapping (family:, ...)",
                       "input": raw}]
    load_plugins()
    family = raw.get("family", "smp")
    cls = MODEL_CLASSES.get(family) if isinstance(family, str) else None
    if cls is None:
        return None, [{"type": "union_tag_invalid", "loc": ("model",), "msg": "unknown family", "input": family}]
    try:
        return cls.model_validate({**raw, "family": family}), []
    except ValidationError as err:
        return None, [{**e, "loc": ("model", family, *e["loc"])} for e in err.errors()]
