"""Encoder weights into smp models: offline ImageNet weights from installed packages, and local
files in the layouts people actually have (smp, timm, torchvision, EfficientNet-PyTorch).

Every tensor of the encoder must land, or the error names the first one that does not: a model is
never loaded half. Files are read with ``torch.load(weights_only=True)`` (``checkpoints.safe_load``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nailseg.core.weights import WeightProvider
from nailseg.errors import ConfigError
from nailseg.stacks._torch.checkpoints import safe_load

PREFIXES = ("module.", "model.", "encoder.", "backbone.")
HEADS = ("_fc.", "fc.", "classifier.", "head.", "heads.", "last_linear.")  # ImageNet classifiers, never in an encoder
# The 1x1 conv + BN before the classifier (EfficientNet-PyTorch ``_conv_head``/``_bn1``, timm
# ``conv_head``/``bn2``): dropped when the encoder has no such layer (timm ``features_only``).
FEATURE_HEADS = ("_conv_head.", "_bn1.", "conv_head.", "bn2.")


def installed_provider(encoder: str) -> WeightProvider | None:
    """The installed weights package that ships ``encoder``, its file verified (a forged one is
    refused here, by name), or ``None`` when no installed package ships it."""
    from nailseg.core.weights import provider_for

    provider = provider_for(encoder)
    if provider is None or provider.locate() is None:
        return None
    provider.verified_file()
    return provider


def _counts(key: str) -> bool:
    return not key.endswith("num_batches_tracked")


def _bare(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _strip(state: dict) -> dict[str, torch.Tensor]:
    """Tensors only, with wrapper prefixes (DataParallel, Lightning, smp, timm ``features_only``) removed."""
    return {_bare(k): v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def map_onto(target: nn.Module, state: dict, source: str) -> dict[str, torch.Tensor]:
    """``state`` mapped onto ``target``'s keys, by name when every key is there, else by order plus
    shape (the tensors that are not ``num_batches_tracked``, in order, classifier heads dropped).
    Raises ``ConfigError`` naming the first tensor that does not fit."""
    wanted = target.state_dict()
    state = _strip(state)
    if all(_bare(k) in state for k in wanted if _counts(k)):
        for key in wanted:
            if _counts(key) and tuple(state[_bare(key)].shape) != tuple(wanted[key].shape):
                raise ConfigError(f"{source}: tensor {_bare(key)} has shape {tuple(state[_bare(key)].shape)}, the "
                                  f"encoder's is {tuple(wanted[key].shape)}")
        return {k: state[_bare(k)] for k in wanted if _bare(k) in state}
    target_keys = [k for k in wanted if _counts(k)]
    source_keys = [k for k in state if _counts(k) and not k.startswith(HEADS)]
    if len(source_keys) > len(target_keys) and not any(_bare(k).startswith(FEATURE_HEADS) for k in target_keys):
        source_keys = [k for k in source_keys if not k.startswith(FEATURE_HEADS)]
    if len(source_keys) != len(target_keys):
        raise ConfigError(f"{source}: {len(source_keys)} tensors, the encoder has {len(target_keys)}: "
                          "not weights for this encoder (by name or by order)")
    mapped = {}
    for theirs, ours in zip(source_keys, target_keys):
        if tuple(state[theirs].shape) != tuple(wanted[ours].shape):
            raise ConfigError(f"{source}: tensor {theirs} {tuple(state[theirs].shape)} does not fit the encoder's "
                              f"{ours} {tuple(wanted[ours].shape)} (mapping by order and shape)")
        mapped[ours] = state[theirs]
    return mapped


def load_encoder_state(encoder: nn.Module, state: dict, source: str) -> None:
    """Load every tensor of ``encoder`` from ``state`` (see :func:`map_onto`), or none."""
    mapped = map_onto(encoder, state, source)
    missing = [k for k in encoder.state_dict() if _counts(k) and k not in mapped]
    if missing:
        raise ConfigError(f"{source}: no tensor for the encoder's {missing[0]}")
    encoder.load_state_dict(mapped, strict=False)


def read_state(path: Path, key: str) -> dict:
    state = safe_load(path, "weights file")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{key}: {path}: not a state dict of tensors")
    return state


def load_provider_weights(encoder: nn.Module, provider: WeightProvider) -> dict:
    """The provider's verified file into ``encoder``; returns what ``summary.json`` records."""
    path = provider.verified_file()
    load_encoder_state(encoder, read_state(path, "model.encoder_weights"), str(path))
    return provider.record(path)
