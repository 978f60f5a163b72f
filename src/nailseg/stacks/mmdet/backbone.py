"""A timm encoder as the backbone of MMDetection's Mask R-CNN, registered in MMDetection's own
``MODELS`` registry, so the config names it like any backbone (``type="NailsegTimmBackbone"``).

Mask R-CNN's FPN, anchors and RoI extractors take four feature maps at strides 4, 8, 16 and 32:
timm's ``features_only`` levels 1-4. Their channels come from the encoder's own ``feature_info``, so
any timm encoder with those strides fits. ``weights``: ``none``, ``imagenet`` (the installed weights
package, SHA-256 checked, offline: the same tensors as the smp, UperNet and Keras stacks) or a
local file. They are loaded in ``init_weights``, which mmengine's Runner calls once the whole
detector is built; inference rebuilds with ``none`` and loads the run's own checkpoint.
"""

from __future__ import annotations

import functools
from pathlib import Path

from mmdet.registry import MODELS

from nailseg.stacks.mmdet.templates.timm_backbone import OUT_INDICES
from nailseg.stacks.mmdet.templates.timm_backbone import TimmBackbone as PlainTimmBackbone


def feature_channels(encoder: str) -> list[int]:
    """The channels of the four levels (the FPN's ``in_channels``), from timm's ``feature_info``."""
    return list(_feature_channels(encoder))


@functools.lru_cache(maxsize=8)
def _feature_channels(encoder: str) -> tuple[int, ...]:
    """Built once per encoder name: a config is generated several times per run (train, eval, export)."""
    import timm

    net = timm.create_model(encoder[3:], features_only=True, pretrained=False, out_indices=OUT_INDICES)
    return tuple(net.feature_info.channels())


@MODELS.register_module(name="NailsegTimmBackbone")
class TimmBackbone(PlainTimmBackbone):
    """The backbone ``nailseg eject`` writes (``templates/timm_backbone.py``: timm's network, its
    forward and ``norm_eval``), named ``tu-<timm model>`` as in the smp stack, with nailseg's weights:
    the installed package for ``imagenet`` (SHA-256 checked), recorded in ``weights_record``.
    ``norm_eval`` is ``optim.freeze_encoder_bn``."""

    def __init__(self, encoder: str, weights: str = "none", norm_eval: bool = False, init_cfg=None):
        super().__init__(encoder[3:], "none", norm_eval, init_cfg)
        self.encoder, self.weights = encoder, weights
        self.weights_record: dict = {"source": "none", "value": "none"}

    def init_weights(self) -> None:
        """The encoder's weights, once; never mmengine's random re-initialisation over them."""
        if getattr(self, "_weights_loaded", False):
            return
        from nailseg.core.weights import sha256_of
        from nailseg.stacks._torch.weights import load_encoder_state, load_provider_weights, read_state

        if self.weights == "imagenet":
            self.weights_record = load_provider_weights(self.net, imagenet_provider(self.encoder))
        elif self.weights not in ("", "none"):
            load_encoder_state(self.net, read_state(Path(self.weights), "model.encoder_weights"), self.weights)
            self.weights_record = {"source": "file", "file": self.weights, "sha256": sha256_of(Path(self.weights))}
        self._weights_loaded = True


def imagenet_provider(encoder: str):
    """The installed, verified weights package for ``imagenet`` (MMDetection has no download of its
    own for a timm backbone), or one line naming what to install."""
    from nailseg.core.weights import missing_weights_message
    from nailseg.errors import ConfigError
    from nailseg.stacks._torch.weights import installed_provider

    provider = installed_provider(encoder)  # a forged file is refused there, by name
    if provider is None:
        raise ConfigError(missing_weights_message(encoder))
    return provider
