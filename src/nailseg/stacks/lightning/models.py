"""segmentation_models_pytorch models and losses, built from the typed config."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nailseg.config import LossConfig, SegformerModel, SmpModel
from nailseg.core.runtime import resolve_weights
from nailseg.errors import ConfigError
from nailseg.stacks._torch.checkpoints import safe_load

ModelConfig = SmpModel | SegformerModel


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model of ``cfg.family``: logits (N, classes, H, W) at the input's size."""
    if cfg.family in ("segformer", "upernet"):
        from nailseg.core.optional import require

        require("transformers", "hf", f"transformers models (model.family: {cfg.family})")
    if cfg.family == "segformer":
        from nailseg.stacks.lightning.segformer import build_segformer

        return build_segformer(cfg)
    if cfg.family == "upernet":
        from nailseg.stacks.lightning.upernet import build_upernet

        return build_upernet(cfg)
    return build_smp_model(cfg)


def without_pretrained(cfg: ModelConfig) -> ModelConfig:
    """The same architecture with no weights to fetch (weights come from a checkpoint)."""
    return cfg.model_copy(update={"encoder_weights": "none", "pretrained": "none"})


def check_model_exists(cfg: ModelConfig) -> None:
    """Refuse an unknown smp architecture or encoder (or timm backbone) before any run folder is written."""
    if cfg.family == "upernet":
        import timm

        if not timm.is_model(cfg.encoder[3:]):
            raise ConfigError(f"model.encoder={cfg.encoder!r}: timm has no model {cfg.encoder[3:]!r}")
        _verify_weights_file(cfg, encoder_weights_source(cfg))
        return
    if cfg.family != "smp":
        return
    import segmentation_models_pytorch as smp

    archs = {name: cls.__name__ for name, cls in smp.MODEL_ARCHITECTURES_MAPPING.items()}
    if cfg.arch.lower() not in archs:
        raise ConfigError(f"model.arch={cfg.arch!r}: smp has {', '.join(archs.values())}")
    encoders = smp.encoders.get_encoder_names()
    if cfg.encoder.startswith("tu-"):  # smp's universal encoder: any timm model with features_only
        import timm

        if not timm.is_model(cfg.encoder[3:]):
            raise ConfigError(f"model.encoder={cfg.encoder!r}: timm has no model {cfg.encoder[3:]!r}")
    elif cfg.encoder not in encoders:
        import difflib

        hint = difflib.get_close_matches(cfg.encoder, encoders, n=3)
        raise ConfigError(f"model.encoder={cfg.encoder!r}: not an smp encoder"
                          + (f" (did you mean {', '.join(hint)}?)" if hint else ""))
    _verify_weights_file(cfg, encoder_weights_source(cfg))


def _verify_weights_file(cfg: ModelConfig, source) -> None:
    """A local ``model.encoder_weights`` file is loaded into the model once before the run folder
    exists, so a corrupt file, or one whose keys or shapes do not fit, is refused with nothing written."""
    if source.kind == "file":
        build_model(cfg)


def encoder_weights_source(cfg: SmpModel):
    """Where ``model.encoder_weights`` comes from, in this order: ``none``; a local file; for
    ``imagenet``, an installed weights package (offline, hash verified); smp's hub download when
    online; else one line naming the package to install."""
    from nailseg.core.runtime import WeightsSource
    from nailseg.core.weights import missing_weights_message
    from nailseg.stacks._torch.weights import installed_provider

    if cfg.encoder_weights == "imagenet" and not Path("imagenet").exists():
        if installed_provider(cfg.encoder) is not None:
            return WeightsSource("provider", cfg.encoder)
        try:
            return resolve_weights(cfg.encoder_weights, "model.encoder_weights", check_online="huggingface.co")
        except ConfigError:
            raise ConfigError(missing_weights_message(cfg.encoder)) from None
    return resolve_weights(cfg.encoder_weights, "model.encoder_weights", check_online="huggingface.co")


def build_smp_model(cfg: SmpModel) -> nn.Module:
    """Any smp architecture with any smp encoder; weights: none, an installed weights package, a hub
    name, or a local file. ``model.nailseg_weights`` records where the encoder's weights came from."""
    import segmentation_models_pytorch as smp

    source = encoder_weights_source(cfg)
    try:
        model = smp.create_model(cfg.arch, encoder_name=cfg.encoder,
                                 encoder_weights=source.value if source.kind == "hub" else None,
                                 in_channels=3, classes=cfg.classes)
    except KeyError as err:
        raise ConfigError(f"model.arch={cfg.arch!r} / model.encoder={cfg.encoder!r}: {err.args[0]}") from None
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None
    record: dict = {"source": source.kind, "value": source.value}
    if source.kind == "provider":
        from nailseg.core.weights import provider_for
        from nailseg.stacks._torch.weights import load_provider_weights

        record = load_provider_weights(model.encoder, provider_for(cfg.encoder))
    elif source.kind == "file":
        load_weights_file(model, Path(source.value), "model.encoder_weights")
        from nailseg.core.weights import sha256_of

        record = {"source": "file", "file": source.value, "sha256": sha256_of(Path(source.value))}
    model.nailseg_weights = record
    return model


def init_source(cfg: ModelConfig) -> Path | None:
    """The weights file ``model.init_from`` names (a run folder's best checkpoint), or ``None``."""
    source = getattr(cfg, "init_from", "none")
    if source in ("", "none"):
        return None
    path = Path(source).expanduser()
    if path.is_dir():
        from nailseg.runs import RunDir

        run = RunDir(path)
        candidates = [p for p in (run.best_checkpoint, run.last_checkpoint, path / "model.pt") if p.exists()]
        if not candidates:
            raise ConfigError(f"model.init_from={source!r}: no best.ckpt, last.ckpt or model.pt in that folder")
        path = candidates[0]
    elif not path.exists():
        raise ConfigError(f"model.init_from={source!r}: no such run folder or weights file")
    elif not path.is_file():
        raise ConfigError(f"model.init_from={source!r}: not a weights file (not a regular file)")
    return path


def verify_init_source(cfg: ModelConfig) -> None:
    """Read ``model.init_from`` safely before any run folder exists (corrupt or unsafe: refused)."""
    path = init_source(cfg)
    if path is not None:
        safe_load(path, "weights file")


def init_from(model: nn.Module, cfg: ModelConfig) -> None:
    """``model.init_from``: start from another run's best weights (a run folder) or a weights file."""
    path = init_source(cfg)
    if path is not None:
        load_weights_file(model, path, "model.init_from")


def load_weights_file(model: nn.Module, path: Path, key: str = "model.encoder_weights") -> None:
    """Load a local state dict (plain, or a Lightning checkpoint's) into the whole model, or into
    its encoder when only the encoder's keys match. Read with ``weights_only=True``."""
    state = safe_load(path, "weights file")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{key}: {path}: not a state dict")
    state = {k.removeprefix("model."): v for k, v in state.items() if isinstance(k, str)}
    if key == "model.encoder_weights" and getattr(model, "encoder", None) is not None \
            and not set(model.state_dict()) <= set(state):
        # An encoder file in another layout (timm, torchvision, EfficientNet-PyTorch): by name, or
        # by order plus shape; every tensor lands or the first misfit is named.
        from nailseg.stacks._torch.weights import load_encoder_state

        load_encoder_state(model.encoder, state, f"{key}: {path}")
        return
    for target in (model, getattr(model, "encoder", None)):
        if target is None:
            continue
        keys = set(target.state_dict())
        for candidate in (state, {k.removeprefix("encoder."): v for k, v in state.items()}):
            if keys and keys <= set(candidate):
                try:
                    target.load_state_dict({k: candidate[k] for k in keys})
                except RuntimeError as err:
                    raise ConfigError(f"{key}: {path}: shapes do not fit ({str(err).splitlines()[-1][:120]})") from None
                return
    raise ConfigError(f"{key}: {path}: keys match neither the model nor its encoder")


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
    """Softmax cross-entropy plus smp's multiclass Dice; targets are class indices (N, 1, H, W).
    Pixels at ``ignore_index`` (unlabelled) count in neither term."""

    def __init__(self, cfg: LossConfig, ignore_index: int = 255, class_weights: list[float] | None = None):
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss

        self.dice = DiceLoss(mode="multiclass", from_logits=True, ignore_index=ignore_index)
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.ce = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)  # weights: loss.class_weights
        self.cfg = cfg

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labels = target[:, 0].long()
        if self.cfg.name == "dice":
            return self.dice(logits, labels)
        if self.cfg.name == "bce":
            return self.ce(logits, labels)
        return self.cfg.dice_weight * self.dice(logits, labels) + self.cfg.bce_weight * self.ce(logits, labels)


def build_loss(cfg: LossConfig, classes: int = 1, ignore_index: int = 255,
               class_weights: list[float] | None = None) -> nn.Module:
    from segmentation_models_pytorch import losses

    if classes > 1:
        if cfg.name not in ("dice_bce", "dice", "bce"):
            raise ConfigError(f"loss.name={cfg.name!r}: with model.classes > 1 use dice_bce, dice or bce "
                              "(cross-entropy stands in for BCE)")
        return MulticlassLoss(cfg, ignore_index, class_weights)
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
