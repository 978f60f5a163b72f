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
from nailseg.errors import ConfigError  # noqa: E402


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


class TwoRateModel(keras.Model):
    """An sm model whose encoder learns at its own rate: ``optimizer`` (from ``compile``) steps the
    decoder and head, ``encoder_optimizer`` the encoder, both from one backward pass. Build it on
    the model's graph, ``TwoRateModel(model.input, model.output)``, then :meth:`set_encoder`
    before ``compile``."""

    def set_encoder(self, layer_names: list[str], optimizer) -> None:
        """``layer_names``: the encoder's layers (``model.nailseg_encoder_layers``, caught when sm built it)."""
        names = set(layer_names)
        mine = {id(w) for layer in self.layers if layer.name in names for w in layer.trainable_weights}
        self._encoder_mask = [id(v) in mine for v in self.trainable_variables]
        if not any(self._encoder_mask) or all(self._encoder_mask):
            raise ConfigError("optim.encoder_lr_scale: this model's encoder and decoder could not be told apart; "
                              "remove the key")
        self.encoder_optimizer = optimizer  # an attribute, so BackupAndRestore's checkpoint holds its state

    def _split(self, items):
        encoder = [x for x, e in zip(items, self._encoder_mask) if e]
        return encoder, [x for x, e in zip(items, self._encoder_mask) if not e]

    def compile(self, *args, **kwargs):
        """Keras' compile, then each optimiser built on its own variables: the decoder's holds no
        moments for the encoder, and the encoder's slots exist before BackupAndRestore restores them."""
        super().compile(*args, **kwargs)
        encoder, rest = self._split(self.trainable_variables)
        self.optimizer.build(rest)
        self.encoder_optimizer.build(encoder)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        scaling = isinstance(self.optimizer, keras.mixed_precision.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight)
            scaled = self.optimizer.get_scaled_loss(loss) if scaling else loss
        grads = tape.gradient(scaled, self.trainable_variables)
        if scaling:
            grads = self.optimizer.get_unscaled_gradients(grads)
        encoder, rest = ([(g, v) for g, v in part if g is not None]
                         for part in self._split(list(zip(grads, self.trainable_variables))))
        if scaling:
            # mixed_float16: both optimisers are LossScaleOptimizers, and each skips its step (and the
            # decoder's halves the loss scale) when either half overflowed, as Keras' single step would.
            # A NaN added to the other half's gradients carries the decision across replicas too.
            encoder, rest = _poisoned(encoder, rest), _poisoned(rest, encoder)
        self.optimizer.apply_gradients(rest)
        self.encoder_optimizer.apply_gradients(encoder)
        return self.compute_metrics(x, y, y_pred, sample_weight)


def _poisoned(pairs, other):
    """``pairs`` with NaN added to every gradient when a gradient of ``other`` is not finite."""
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g, _ in other]) if other else tf.constant(True)
    poison = tf.where(finite, 0.0, float("nan"))
    return [(g + tf.cast(poison, g.dtype), v) for g, v in pairs]


def with_encoder_rate(model, exp: Experiment, schedule: EpochSchedule, policy: str):
    """``model`` as a :class:`TwoRateModel` when ``optim.encoder_lr_scale`` is not 1, else itself."""
    scale = encoder_scale(exp)
    if scale == 1.0:
        return model
    two = TwoRateModel(model.input, model.output, name=model.name)
    for key in ("nailseg_weights", "nailseg_encoder_layers"):
        object.__setattr__(two, key, getattr(model, key, None))
    encoder_opt = make_optimizer(exp, schedule.scaled(scale))
    if policy == "mixed_float16":  # its own loss-scale state only decides when to skip (see train_step)
        encoder_opt = keras.mixed_precision.LossScaleOptimizer(encoder_opt)
    two.set_encoder(model.nailseg_encoder_layers, encoder_opt)
    return two


class TimeBudgetCallback(keras.callbacks.Callback):
    """``trainer.max_time``: each finished epoch's time goes to the engine's plan
    (``TrainContext.budget_epoch``); when it trims, ``fit`` stops after the planned epoch and the
    schedule (both optimisers', through their shared factors) is sized to it."""

    def __init__(self, ctx, schedule: EpochSchedule):
        super().__init__()
        self.ctx, self.schedule = ctx, schedule
        self._since = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._since is None:
            self._since = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        # from the previous epoch's end: the pace includes the backup written after each epoch
        now = time.perf_counter()
        planned = self.ctx.budget_epoch(epoch + 1, now - self._since)
        self._since = now
        if planned is not None:
            self.schedule.replan(self.ctx.exp, planned)
        budget = self.ctx.budget
        if budget is not None and epoch + 1 >= budget.epochs:
            self.model.stop_training = True
