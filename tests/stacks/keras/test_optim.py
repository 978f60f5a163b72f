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
    """BackupAndRestore checkpoints the model and what it tracks: a resume gets back the encoder's
    optimiser (its Adam moments and step count), not only the decoder's. Each optimiser holds
    moments for its own variables only."""
    import tf_keras as keras

    model = _two_rate_model(0.5, 0.01)
    encoder, rest = model._split(model.trainable_variables)
    # iterations (+ the current lr) each, then an m and a v a variable
    assert len(model.optimizer.variables) - len(model.encoder_optimizer.variables) == 2 * (len(rest) - len(encoder))
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)
    model.fit(*_one_batch(), batch_size=2, epochs=2, verbose=0, callbacks=[backup])
    trained = [v.numpy() for v in model.encoder_optimizer.variables]
    restored = _two_rate_model(0.5, 0.01)
    restored.fit(*_one_batch(), batch_size=2, epochs=2, verbose=0,  # both epochs done: restored, nothing trained
                 callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False)])
    back = [v.numpy() for v in restored.encoder_optimizer.variables]
    assert restored.encoder_optimizer.iterations.numpy() == 2 and len(back) == len(trained) > 100
    assert all(np.array_equal(a, b) for a, b in zip(trained, back))
    assert any(np.abs(a).max() > 0 for a in back[2:])  # the moments, not only the step count


@pytest.mark.parametrize("arch,encoder", [("PSPNet", "resnet18"), ("Unet", "seresnet18")])
def test_the_encoder_is_found_by_identity_whatever_its_layers_are_called(tf, arch, encoder):
    """sm's PSPNet keeps only the first part of its encoder, and SE-ResNet's squeeze-excitation
    layers have numbered names that differ between two builds: the encoder's layers are caught when
    sm builds them, so the split holds (a name match against a second build finds none of them)."""
    import segmentation_models as sm

    from nailseg.stacks.keras.lite import register
    from nailseg.stacks.keras.models import build_sm_model
    from nailseg.stacks.keras.optim import EpochSchedule, with_encoder_rate

    exp = load_experiment(CONFIG, [f"model.arch={arch}", f"model.encoder={encoder}", "optim.encoder_lr_scale=0.5"])
    model = with_encoder_rate(build_sm_model(exp.model, (96, 96)), exp, EpochSchedule.build(exp, 1), "float32")
    register()
    backbone = sm.inject_global_submodules(sm.Backbones.get_backbone)(
        encoder, input_shape=(96, 96, 3), weights=None, include_top=False)
    found = sum(model._encoder_mask)
    if arch == "PSPNet":
        assert 0 < found < len(backbone.trainable_weights) and not all(model._encoder_mask)
    else:
        assert found == len(backbone.trainable_weights)


def test_mixed_float16_unscales_the_gradients_for_both_optimisers(tf):
    """The GPU policy, run on the CPU: the decoder's LossScaleOptimizer scales the loss once (here by
    a fixed 8) and both optimisers step on the unscaled gradients. Against Keras' own step (one
    LossScaleOptimizer at the same scale, so the same float16 arithmetic) from the same weights on
    the same batch, SGD's first step (lr x gradient) is the same for the decoder and a quarter of it
    for the encoder; a gradient left scaled would be 8x. One model takes both steps (the two-rate
    one wraps its layers), so each variable is compared with itself."""
    import tf_keras as keras

    from nailseg.stacks.keras.models import build_sm_model
    from nailseg.stacks.keras.optim import EpochSchedule, make_optimizer, with_encoder_rate

    x, y = _one_batch()
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        steps = []
        for scale, loss_scale in ((1.0, 8.0), (0.25, 8.0)):
            exp = load_experiment(CONFIG, ["optim.name=sgd", "optim.weight_decay=0", "optim.lr=0.01",
                                           "optim.scheduler=none", f"optim.encoder_lr_scale={scale}"])
            schedule = EpochSchedule.build(exp, steps_per_epoch=1)
            if not steps:
                plain = build_sm_model(exp.model, (None, None))
                start = plain.get_weights()
                model = plain
            else:
                plain.set_weights(start)  # the same model, back at its starting weights
                model = with_encoder_rate(plain, exp, schedule, "mixed_float16")
            model.compile(loss="binary_crossentropy", optimizer=keras.mixed_precision.LossScaleOptimizer(
                make_optimizer(exp, schedule), dynamic=False, initial_scale=loss_scale))
            before = {v.ref(): v.numpy().copy() for v in model.trainable_variables}
            model.fit(x, y, batch_size=2, epochs=1, verbose=0)
            steps.append({v.ref(): before[v.ref()] - v.numpy() for v in model.trainable_variables})
    finally:
        keras.mixed_precision.set_global_policy("float32")
    is_encoder = {v.ref(): e for v, e in zip(model.trainable_variables, model._encoder_mask)}
    for part, ratio in ((True, 0.25), (False, 1.0)):
        chosen = [ref for ref, e in is_encoder.items() if e == part]
        keras_own, two_rate = (np.concatenate([s[ref].ravel() for ref in chosen]) for s in steps)
        assert np.linalg.norm(keras_own) > 0
        assert np.linalg.norm(two_rate - ratio * keras_own) < 0.02 * np.linalg.norm(ratio * keras_own), part


class _Plan:
    """The part of TrainContext the budget callback talks to."""

    def __init__(self, exp, budget):
        self.exp, self.budget = exp, budget

    def budget_epoch(self, epochs_done, epoch_time_s):
        return self.budget.epochs if self.budget.after_epoch(epochs_done, epoch_time_s) else None


def test_a_time_budget_stops_fit_and_sizes_the_schedule(tf):
    """200 epochs of 50 ms in a 3 s budget: ``fit`` stops at the planned epoch, and the cosine,
    shared by both optimisers, reaches its bottom there instead of being cut off high."""
    import tf_keras as keras

    from nailseg.core.budget import TimeBudget
    from nailseg.core.runtime import lr_factor
    from nailseg.stacks.keras.optim import EpochSchedule, TimeBudgetCallback

    exp = load_experiment(CONFIG, ["trainer.max_epochs=200", "optim.warmup_epochs=0", "optim.lr=0.01"])
    schedule = EpochSchedule.build(exp, steps_per_epoch=1)
    encoder_schedule = schedule.scaled(0.5)
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=schedule), loss="mse")
    plan = _Plan(exp, TimeBudget(3.0, 200))
    slow = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: time.sleep(0.05))
    history = model.fit(np.zeros((4, 2)), np.zeros((4, 1)), batch_size=4, epochs=200, verbose=0,
                        callbacks=[slow, TimeBudgetCallback(plan, schedule)])
    planned = plan.budget.epochs
    assert 5 <= planned < 200 and len(history.epoch) == planned
    last = planned - 1
    assert schedule.at_epoch(last) == pytest.approx(0.01 * lr_factor(last, planned, 0, "cosine"))
    assert encoder_schedule.at_epoch(last) == pytest.approx(0.5 * schedule.at_epoch(last))
    assert schedule.at_epoch(last) < 0.1 * 0.01 * lr_factor(last, 200, 0, "cosine")
    assert float(schedule(tf.constant(last))) == pytest.approx(schedule.at_epoch(last))
