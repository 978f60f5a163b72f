"""The Keras stack's optimiser, schedule and time budget, in tf.keras' own terms.

- :class:`EpochSchedule`: the shared per-epoch schedule (``core.runtime.lr_factor``) as a Keras
  ``LearningRateSchedule``, constant within an epoch as Lightning's epoch-interval ``LambdaLR``. Its
  per-epoch factors sit in a variable, so ``trainer.max_time`` can resize it in the middle of ``fit``.
- :class:`TwoRateModel`: ``optim.encoder_lr_scale``. A tf.keras optimiser has one learning rate for
  all its variables (no parameter groups as in torch), so the encoder gets an optimiser of its own
  and ``train_step`` hands each optimiser its variables' gradients, the pattern of Keras' guide
  "Customizing what happens in fit()" (its GAN trains two optimisers the same way).
- :class:`TimeBudgetCallback`: ``trainer.max_time`` for ``model.fit`` (``core/budget.py`` plans).

This module imports TensorFlow: only ``stacks/keras/stack.py`` and the tests import it.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from nailseg.config import Experiment  # noqa: E402
from nailseg.core.runtime import encoder_lr_scale, lr_factor  # noqa: E402


def epoch_factors(exp: Experiment, epochs: int) -> list[float]:
    """The lr multiplier of each of ``trainer.max_epochs`` epochs for a run planned to ``epochs``
    (fewer when a time budget trimmed it: the cosine then reaches its bottom at the last planned one)."""
    o = exp.optim
    planned = [lr_factor(e, epochs, o.warmup_epochs, o.scheduler, o.poly_power) for e in range(epochs)]
    return planned + planned[-1:] * (exp.trainer.max_epochs - epochs)


class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``lr * scale * factors[step // steps_per_epoch]``. ``factors`` is a non-trainable variable
    that two schedules may share (the encoder's and the rest's), rewritten by :meth:`replan`."""

    def __init__(self, lr: float, factors: tf.Variable, steps_per_epoch: int, scale: float = 1.0):
        super().__init__()
        self.lr, self.factors, self.steps, self.scale = float(lr), factors, max(1, int(steps_per_epoch)), float(scale)

    @classmethod
    def build(cls, exp: Experiment, steps_per_epoch: int, epochs: int | None = None) -> EpochSchedule:
        factors = tf.Variable(epoch_factors(exp, epochs or exp.trainer.max_epochs), trainable=False, dtype=tf.float32,
                              name="lr_factors")
        return cls(exp.optim.lr, factors, steps_per_epoch)

    def scaled(self, scale: float) -> EpochSchedule:
        """The same schedule at ``scale`` times the rate (the encoder's), sharing the factors."""
        return EpochSchedule(self.lr, self.factors, self.steps, self.scale * scale)

    def at_epoch(self, epoch: int) -> float:
        factors = self.factors.numpy()
        return self.lr * self.scale * float(factors[min(epoch, len(factors) - 1)])

    def replan(self, exp: Experiment, epochs: int) -> None:
        self.factors.assign(epoch_factors(exp, epochs))

    def __call__(self, step):
        last = tf.cast(tf.shape(self.factors)[0] - 1, tf.int64)
        epoch = tf.minimum(tf.cast(step, tf.int64) // self.steps, last)
        return self.lr * self.scale * tf.gather(self.factors, epoch)

    def get_config(self) -> dict:
        return {"lr": self.lr, "factors": self.factors.numpy().tolist(), "steps_per_epoch": self.steps,
                "scale": self.scale}


def make_optimizer(exp: Experiment, schedule):
    o = exp.optim
    if o.name == "adamw":
        return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=o.weight_decay)
    if o.name == "adam":  # Keras applies weight decay decoupled; torch's Adam adds it to the gradient (L2)
        return keras.optimizers.Adam(learning_rate=schedule, weight_decay=o.weight_decay or None)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, weight_decay=o.weight_decay or None)


def encoder_scale(exp: Experiment) -> float:
    return encoder_lr_scale(exp.optim.encoder_lr_scale, exp.model.default_encoder_lr_scale)


def encoder_layer_names(encoder: str) -> tuple[set[str], int]:
    """The names of the layers with weights of sm's backbone ``encoder`` (built alone, without
    weights), and its number of trainable variables: in an sm model the encoder's layers keep the
    names they have in the backbone (sm builds the decoder on it)."""
    import segmentation_models as sm

    from nailseg.stacks.keras.lite import register

    register()
    backbone = sm.inject_global_submodules(sm.Backbones.get_backbone)(
        encoder, input_shape=(None, None, 3), weights=None, include_top=False)
    return {layer.name for layer in backbone.layers if layer.trainable_weights}, len(backbone.trainable_weights)


class TwoRateModel(keras.Model):
    """An sm model whose encoder learns at its own rate: ``optimizer`` (from ``compile``) steps the
    decoder and head, ``encoder_optimizer`` the encoder, both from one backward pass. Build it on
    the model's graph: ``TwoRateModel(model.input, model.output)``, then :meth:`set_encoder`."""

    def set_encoder(self, encoder: str, optimizer) -> None:
        names, expected = encoder_layer_names(encoder)
        mask = [any(v is w for layer in self.layers if layer.name in names for w in layer.trainable_weights)
                for v in self.trainable_variables]
        if sum(mask) != expected:  # a backbone whose layers sm renamed: refuse rather than mis-split
            raise RuntimeError(f"optim.encoder_lr_scale: found {sum(mask)} of the {expected} trainable variables of "
                               f"{encoder} in the model by layer name")
        self._encoder_mask = mask
        self.encoder_optimizer = optimizer  # an attribute, so BackupAndRestore's checkpoint holds its state

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        scaling = isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight)
            scaled = self.optimizer.get_scaled_loss(loss) if scaling else loss
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        if scaling:  # mixed_float16 on a GPU: unscale, and skip the encoder's step when the decoder's is skipped
            grads = self.optimizer.get_unscaled_gradients(grads)
        encoder = [(g, v) for g, v, e in zip(grads, variables, self._encoder_mask) if e and g is not None]
        rest = [(g, v) for g, v, e in zip(grads, variables, self._encoder_mask) if not e and g is not None]
        if scaling:
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g, _ in encoder + rest])
            self.optimizer.apply_gradients(rest)
            tf.cond(finite, lambda: self.encoder_optimizer.apply_gradients(encoder),
                    lambda: self.encoder_optimizer.iterations.assign_add(1))
        else:
            self.optimizer.apply_gradients(rest)
            self.encoder_optimizer.apply_gradients(encoder)
        return self.compute_metrics(x, y, y_pred, sample_weight)


def with_encoder_rate(model, exp: Experiment, schedule: EpochSchedule, policy: str):
    """``model`` as a :class:`TwoRateModel` when ``optim.encoder_lr_scale`` is not 1, else itself."""
    scale = encoder_scale(exp)
    if scale == 1.0:
        return model
    two = TwoRateModel(model.input, model.output, name=model.name)
    object.__setattr__(two, "nailseg_weights", getattr(model, "nailseg_weights", None))
    encoder_opt = make_optimizer(exp, schedule.scaled(scale))
    two.set_encoder(exp.model.encoder, encoder_opt)
    return two


class TimeBudgetCallback(keras.callbacks.Callback):
    """``trainer.max_time``: each finished epoch's time goes to the engine's plan
    (``TrainContext.budget_epoch``); when it trims, ``fit`` stops after the planned epoch and the
    schedule (both optimisers', through their shared factors) is sized to it."""

    def __init__(self, ctx, schedule: EpochSchedule):
        super().__init__()
        self.ctx, self.schedule = ctx, schedule
        self._t0 = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        planned = self.ctx.budget_epoch(epoch + 1, time.perf_counter() - self._t0)
        if planned is not None:
            self.schedule.replan(self.ctx.exp, planned)
        budget = self.ctx.budget
        if budget is not None and epoch + 1 >= budget.epochs:
            self.model.stop_training = True
