"""segmentation_models_pytorch models and losses, built from the typed config."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nailseg._net import online
from nailseg.errors import ConfigError
from nailseg.experiment import LossConfig, ModelConfig


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of ``cfg.family``: logits (N, classes, H, W) at the input's size."""
    if cfg.family == "segformer":
        from nailseg._optional import require

        require("transformers", "hf", "SegFormer (model.family: segformer)")
        from nailseg.models.segformer import build_segformer

        return build_segformer(cfg)
    return build_smp_model(cfg)


def without_pretrained(cfg: ModelConfig) -> ModelConfig:
    """The same architecture with no weights to fetch (weights come from a checkpoint)."""
    return cfg.model_copy(update={"encoder_weights": "none", "pretrained": "none"})


def build_smp_model(cfg: ModelConfig) -> nn.Module:
    """Any smp architecture with any smp encoder; weights: none, a hub name, or a local file."""
    import segmentation_models_pytorch as smp

    weights = cfg.encoder_weights
    local = weights not in ("none", "") and Path(weights).expanduser().exists()
    hub_weights = None if weights in ("none", "") or local else weights
    if hub_weights is not None and not online():
        raise ConfigError(
            f"model.encoder_weights={weights!r}: cannot download weights (no internet); "
            "use encoder_weights: none, or a path to a local weights file"
        )
    try:
        model = smp.create_model(cfg.arch, encoder_name=cfg.encoder, encoder_weights=hub_weights,
                                 in_channels=3, classes=cfg.classes)
    except KeyError as err:
        raise ConfigError(f"model.arch={cfg.arch!r} / model.encoder={cfg.encoder!r}: {err.args[0]}") from None
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None
    if local:
        load_weights_file(model, Path(weights).expanduser())
    return model


def load_weights_file(model: nn.Module, path: Path) -> None:
    """Load a local state dict into the whole model, or into its encoder when keys match that."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise ConfigError(f"model.encoder_weights: {path}: cannot load weights ({err})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    for target in (model, model.encoder):
        keys = set(target.state_dict())
        if keys and keys <= set(state):
            target.load_state_dict({k: state[k] for k in keys})
            return
        stripped = {k.removeprefix("encoder."): v for k, v in state.items()}
        if target is model.encoder and keys and keys <= set(stripped):
            target.load_state_dict({k: stripped[k] for k in keys})
            return
    raise ConfigError(f"model.encoder_weights: {path}: keys match neither the model nor its encoder")


class DiceBCELoss(nn.Module):
    """Weighted sum of smp's Dice loss and binary cross-entropy, both on logits."""

    def __init__(self, dice_weight: float, bce_weight: float):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss

        self.dice = DiceLoss(mode="binary", from_logits=True)
        self.bce = nn.BCEWithLogitsLoss()
        self.dice_weight, self.bce_weight = dice_weight, bce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice_weight * self.dice(logits, target) + self.bce_weight * self.bce(logits, target)


class MulticlassLoss(nn.Module):
    """Softmax cross-entropy plus smp's multiclass Dice; targets are class indices (N, 1, H, W)."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss

        self.dice = DiceLoss(mode="multiclass", from_logits=True)
        self.ce = nn.CrossEntropyLoss()
        self.cfg = cfg

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = target[:, 0].long()
        if self.cfg.name == "dice":
            return self.dice(logits, labels)
        if self.cfg.name == "bce":
            return self.ce(logits, labels)
        return self.cfg.dice_weight * self.dice(logits, labels) + self.cfg.bce_weight * self.ce(logits, labels)


def build_loss(cfg: LossConfig, classes: int = 1) -> nn.Module:
    from segmentation_models_pytorch import losses

    if classes > 1:
        if cfg.name not in ("dice_bce", "dice", "bce"):
            raise ConfigError(f"loss.name={cfg.name!r}: with model.classes > 1 use dice_bce, dice or bce "
                              "(cross-entropy stands in for BCE)")
        return MulticlassLoss(cfg)
    if cfg.name == "dice_bce":
        return DiceBCELoss(cfg.dice_weight, cfg.bce_weight)
    return {
        "dice": lambda: losses.DiceLoss(mode="binary", from_logits=True),
        "bce": lambda: nn.BCEWithLogitsLoss(),
        "focal": lambda: losses.FocalLoss(mode="binary"),
        "lovasz": lambda: losses.LovaszLoss(mode="binary", from_logits=True),
        "jaccard": lambda: losses.JaccardLoss(mode="binary", from_logits=True),
        "tversky": lambda: losses.TverskyLoss(mode="binary", from_logits=True),
    }[cfg.name]()


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) probability of 'nail': sigmoid of one logit, or 1 - softmax background."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return 1.0 - torch.softmax(logits.float(), dim=1)[:, :1]
