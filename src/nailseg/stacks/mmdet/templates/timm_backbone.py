"""A timm encoder as Mask R-CNN's backbone, registered in MMDetection's own ``MODELS`` registry, so
the config names it like any backbone: ``backbone=dict(type="TimmBackbone", encoder=..., weights=...)``.

Written by `nailseg eject`; nothing here imports nailseg. The config imports this file through
``custom_imports`` (train.py puts this folder on ``sys.path``, as MMDetection's own tools need too).

Mask R-CNN's FPN, anchors and RoI extractors take four feature maps at strides 4, 8, 16 and 32:
timm's ``features_only`` levels 1-4, whose channels (the FPN's ``in_channels``) come from timm's
``feature_info``. ``weights``: ``none`` or a ``.pt`` state dict of that network beside this file
(the ImageNet weights nailseg resolved), loaded in ``init_weights``, which mmengine's Runner calls
once the whole detector is built.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import nn

OUT_INDICES = (1, 2, 3, 4)  # strides 4, 8, 16, 32


@MODELS.register_module(force=True)  # force: importing this file again (a notebook, a test) replaces the entry
class TimmBackbone(BaseModule):
    """``encoder``: a timm model name. ``norm_eval``: BatchNorm statistics stay fixed while training,
    as MMDetection's ResNet does with the same flag."""

    def __init__(self, encoder: str, weights: str = "none", norm_eval: bool = False, init_cfg=None):
        super().__init__(init_cfg)
        self.weights, self.norm_eval = weights, norm_eval
        self.net = timm.create_model(encoder, features_only=True, pretrained=False, out_indices=OUT_INDICES)

    def init_weights(self) -> None:
        """The encoder's own weights, never mmengine's random re-initialisation over them."""
        if self.weights not in ("", "none"):
            path = Path(self.weights) if Path(self.weights).is_absolute() else Path(__file__).with_name(self.weights)
            self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.net(x))

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.norm_eval:
            for module in self.net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self
