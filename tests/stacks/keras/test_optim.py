"""The Keras stack's optimisers, schedule and time budget (stacks/keras/optim.py), on tiny models in
this (TensorFlow) process."""

import time

import numpy as np
import pytest

from nailseg.config import load_experiment
from tests.conftest import REPO

CONFIG = REPO / "configs" / "keras-cpu.yaml"


def _two_rate_model(scale: float, lr: float, *extra: str):
    from nailseg.stacks.keras.models import build_sm_model
    from nailseg.stacks.keras.optim import EpochSchedule, make_optimizer, with_encoder_rate

    exp = load_experiment(CONFIG, ["optim.name=adam", "optim.weight_decay=0", f"optim.lr={lr}", "optim.scheduler=none",
                                   f"optim.encoder_lr_scale={scale}", *extra])
    schedule = EpochSchedule.build(exp, steps_per_epoch=1)
    model = with_encoder_rate(build_sm_model(exp.model, (None, None)), exp, schedule, "float32")
    model.compile(optimizer=make_optimizer(exp, schedule), loss="binary_crossentropy")
    return model


def _one_batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(2, 32, 32, 3)).astype("float32"), (rng.random((2, 32, 32, 1)) > 0.5).astype("float32")


def test_the_encoder_steps_at_its_own_rate(tf):
    """Adam's first step moves every weight with a gradient by the learning rate (m / sqrt(v) is the
    gradient's sign), so the largest change of each variable reads its optimiser's rate back:
    lr x 0.25 for each of resnet18's encoder variables, lr for the decoder's and the head's."""
    model = _two_rate_model(0.25, 0.01)
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.fit(*_one_batch(), batch_size=2, epochs=1, verbose=0)
    moved = [float(np.abs(v.numpy() - b).max()) for v, b in zip(model.trainable_variables, before)]
    encoder = [m for m, e in zip(moved, model._encoder_mask) if e]
    rest = [m for m, e in zip(moved, model._encoder_mask) if not e]
    assert len(encoder) == 58 and rest  # resnet18's trainable variables in sm's backbone, and the decoder's
    assert max(encoder) == pytest.approx(0.0025, rel=1e-3) and max(rest) == pytest.approx(0.01, rel=1e-3)
    assert model.encoder_optimizer.iterations.numpy() == model.optimizer.iterations.numpy() == 1


def test_without_a_scale_the_model_is_sms_own():
    from nailseg.stacks.keras.optim import TwoRateModel

    model = _two_rate_model(1.0, 0.01)
    assert not isinstance(model, TwoRateModel)


def test_the_encoders_optimiser_is_in_the_backup_a_resume_restores(tf, tmp_path):
    """BackupAndRestore checkpoints the model and what it tracks: the encoder's optimiser (its Adam
    moments and step count) comes back with a resume, not only the decoder's."""
    import tf_keras as keras

    model = _two_rate_model(0.5, 0.01)
    model.fit(*_one_batch(), batch_size=2, epochs=2, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)])
    saved = [name for name, _ in tf.train.list_variables(str(tmp_path / "backup" / "chief"))]
    assert any(name.startswith("model/encoder_optimizer/") and "iter" in name for name in saved), saved[:20]
    restored = _two_rate_model(0.5, 0.01)
    restored.fit(*_one_batch(), batch_size=2, epochs=3, verbose=0,
                 callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)])
    assert restored.encoder_optimizer.iterations.numpy() == 3  # two restored + the third epoch's step


def test_mixed_float16_unscales_the_gradients_for_both_optimisers(tf):
    """The GPU policy, run on the CPU: the decoder's LossScaleOptimizer scales the loss once (here by
    a fixed 8) and both optimisers step on the unscaled gradients. Against Keras' own step (one
    optimiser, its LossScaleOptimizer at a scale of 1) from the same weights on the same batch, SGD's
    first step (lr x gradient) is the same for the decoder and a quarter of it for the encoder; a
    gradient left scaled would be 8x."""
    import tf_keras as keras

    from nailseg.stacks.keras.models import build_sm_model
    from nailseg.stacks.keras.optim import EpochSchedule, make_optimizer, with_encoder_rate

    x, y = _one_batch()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        steps, mask, weights = [], None, None
        for scale, loss_scale in ((1.0, 1.0), (0.25, 8.0)):
            exp = load_experiment(CONFIG, ["optim.name=sgd", "optim.weight_decay=0", "optim.lr=0.01",
                                           "optim.scheduler=none", f"optim.encoder_lr_scale={scale}"])
            schedule = EpochSchedule.build(exp, steps_per_epoch=1)
            model = with_encoder_rate(build_sm_model(exp.model, (None, None)), exp, schedule, "mixed_float16")
            if weights is None:  # the second model starts from the first one's weights
                weights = model.get_weights()
            else:
                model.set_weights(weights)
            model.compile(loss="binary_crossentropy", optimizer=keras.mixed_precision.LossScaleOptimizer(
                make_optimizer(exp, schedule), dynamic=False, initial_scale=loss_scale))
            before = [v.numpy().copy() for v in model.trainable_variables]
            model.fit(x, y, batch_size=2, epochs=1, verbose=0)
            steps.append([b - v.numpy() for b, v in zip(before, model.trainable_variables)])
            mask = getattr(model, "_encoder_mask", mask)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for part, ratio in ((True, 0.25), (False, 1.0)):
        keras_own, two_rate = (np.concatenate([s[i].ravel() for i, e in enumerate(mask) if e == part]) for s in steps)
        assert np.linalg.norm(keras_own) > 0
        assert np.linalg.norm(two_rate - ratio * keras_own) < 0.02 * np.linalg.norm(ratio * keras_own), part


class _Plan:
    """The part of TrainContext the budget callback talks to."""

    def __init__(self, exp, budget):
        self.exp, self.budget = exp, budget

    def budget_epoch(self, epochs_done, epoch_time_s):
        return self.budget.epochs if self.budget.after_epoch(epochs_done, epoch_time_s) else None


def test_a_time_budget_stops_fit_and_sizes_the_schedule(tf):
    """200 epochs of 30 ms in a 1.5 s budget: ``fit`` stops at the planned epoch, and the cosine,
    shared by both optimisers, reaches its bottom there instead of being cut off high."""
    import tf_keras as keras

    from nailseg.core.budget import TimeBudget
    from nailseg.core.runtime import lr_factor
    from nailseg.stacks.keras.optim import EpochSchedule, TimeBudgetCallback

    exp = load_experiment(CONFIG, ["trainer.max_epochs=200", "optim.warmup_epochs=0", "optim.lr=0.01"])
    schedule = EpochSchedule.build(exp, steps_per_epoch=1)
    encoder_schedule = schedule.scaled(0.5)
    plan = _Plan(exp, TimeBudget(1.5, 200))
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule), loss="mse")
    slow = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: time.sleep(0.03))
    history = model.fit(np.zeros((4, 2)), np.zeros((4, 1)), batch_size=4, epochs=200, verbose=0,
                        callbacks=[slow, TimeBudgetCallback(plan, schedule)])
    planned = plan.budget.epochs
    assert 5 <= planned < 200 and len(history.epoch) == planned
    last = planned - 1
    assert schedule.at_epoch(last) == pytest.approx(0.01 * lr_factor(last, planned, 0, "cosine"))
    assert encoder_schedule.at_epoch(last) == pytest.approx(0.5 * schedule.at_epoch(last))
    assert schedule.at_epoch(last) < 0.1 * 0.01 * lr_factor(last, 200, 0, "cosine")
    assert float(schedule(tf.constant(last))) == pytest.approx(schedule.at_epoch(last))
