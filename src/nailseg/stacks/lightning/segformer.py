"""SegFormer from Hugging Face transformers, as a plain ``nn.Module`` for the Lightning stack.

``pretrained: none`` builds the model from a ``SegformerConfig`` with the published sizes of
each variant (so it trains offline); a local folder loads from disk; a hub id (e.g.
``nvidia/mit-b2``) loads from the local Hugging Face cache or, when the internet is there,
downloads, and fails within seconds with a clear message when it is not. The classification
head is always replaced for our labels (``ignore_mismatched_sizes``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nailseg.errors import ConfigError
from nailseg.config import SegformerModel as ModelConfig

# Mix Transformer (MiT) encoder sizes from the SegFormer paper (Xie et al., 2021), Table 6.
VARIANTS: dict[str, dict] = {
    "b0": {"depths": [2, 2, 2, 2], "hidden_sizes": [32, 64, 160, 256], "decoder_hidden_size": 256},
    "b1": {"depths": [2, 2, 2, 2], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 256},
    "b2": {"depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768},
    "b3": {"depths": [3, 4, 18, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768},
    "b4": {"depths": [3, 8, 27, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768},
    "b5": {"depths": [3, 6, 40, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768},
}
LABELS = {0: "background", 1: "nail"}


def _labels(classes: int) -> tuple[dict[int, str], dict[str, int]]:
    id2label = {0: "nail"} if classes == 1 else {i: LABELS.get(i, f"class_{i}") for i in range(classes)}
    return id2label, {v: k for k, v in id2label.items()}


def segformer_config(variant: str, classes: int):
    from transformers import SegformerConfig

    id2label, label2id = _labels(classes)
    return SegformerConfig(**VARIANTS[variant], num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1],
                           num_labels=classes, id2label=id2label, label2id=label2id)


class HfSegmenter(nn.Module):
    """A transformers segmentation model as smp models are: ``forward(image)`` gives logits
    (N, classes, H, W) at the input's size (bilinear from the model's own resolution where it is
    lower), and ``encoder`` is its pretrained-style half (the encoder lr group, BN freezing).
    The transformers model is ``self.hf``, so ``save_pretrained`` sees it whole."""

    def __init__(self, hf_model, encoder_attr: str):
        super().__init__()
        self.hf = hf_model
        self.encoder_attr = encoder_attr

    @property
    def encoder(self) -> nn.Module:
        return getattr(self.hf, self.encoder_attr)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.hf(pixel_values=image).logits
        if logits.shape[-2:] == image.shape[-2:]:  # UperNet upsamples itself
            return logits
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


def SegformerSegmenter(hf_model) -> HfSegmenter:  # noqa: N802 - reads as the class it was
    """SegFormer, whose logits come at 1/4 of the input and are upsampled (bilinear), like smp models."""
    return HfSegmenter(hf_model, "segformer")


def build_segformer(cfg: ModelConfig) -> SegformerSegmenter:
    from transformers import SegformerForSemanticSegmentation
    from transformers.utils import logging as hf_logging

    id2label, label2id = _labels(cfg.classes)
    source = cfg.pretrained
    if source in ("none", ""):
        return SegformerSegmenter(SegformerForSemanticSegmentation(segformer_config(cfg.variant, cfg.classes)))
    kwargs = dict(num_labels=cfg.classes, id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the expected "newly initialised head" warning is noise here
    try:
        if Path(source).expanduser().is_dir():
            try:
                hf = SegformerForSemanticSegmentation.from_pretrained(str(Path(source).expanduser()), **kwargs)
            except (OSError, ValueError) as err:
                raise ConfigError(f"model.pretrained: {source}: cannot load a SegFormer from it ({err})") from None
            return SegformerSegmenter(hf)
        try:  # the local Hugging Face cache works offline
            return SegformerSegmenter(SegformerForSemanticSegmentation.from_pretrained(
                source, local_files_only=True, **kwargs))
        except OSError:
            pass
        from nailseg.core.net import online

        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") or not online():
            raise ConfigError(
                f"model.pretrained={source!r}: not in the local Hugging Face cache and the hub cannot be "
                "reached (offline); use pretrained: none or a local folder saved with save_pretrained"
            )
        try:
            hf = SegformerForSemanticSegmentation.from_pretrained(source, **kwargs)
        except OSError as err:
            raise ConfigError(f"model.pretrained={source!r}: {err}") from None
        return SegformerSegmenter(hf)
    finally:
        hf_logging.set_verbosity(verbosity)
