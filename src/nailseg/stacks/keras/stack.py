"""tf.keras + segmentation_models + tf.data: the ``keras`` stack.

It shares everything framework-free with the Lightning stack (data check, split file,
augmentation spec, metrics, run folder, evaluation at original resolution), so a Keras run
and a Lightning run on the same split are comparable number for number. TensorFlow is never
imported together with torch in one process (importing TensorFlow before torch loads triton
crashes); this module imports no torch.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # CUDA probing on CPU-only machines is not an error

import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import segmentation_models as sm  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from nailseg import __version__  # noqa: E402
from nailseg.config import Experiment  # noqa: E402
from nailseg.core.evaluate import Predictor, at_image_size, model_input  # noqa: E402
from nailseg.core.io import atomic_dir, atomic_path, read_jsonl  # noqa: E402
from nailseg.core.metrics import scores  # noqa: E402
from nailseg.runs import RunDir, load_with_fallback  # noqa: E402
from nailseg.core.runtime import resolve_accelerator, resolve_precision  # noqa: E402
from nailseg.contract import EpochRecord, FitResult, TrainContext  # noqa: E402
from nailseg.errors import ConfigError  # noqa: E402
from nailseg.specs import STACKS  # noqa: E402
from nailseg.stacks.keras.metrics import ClassConfusion, ConfusionCounts, find_confusion  # noqa: E402
from nailseg.stacks.keras.models import build_sm_loss, build_sm_model, check_sm_model  # noqa: E402
from nailseg.stacks.keras.optim import EpochSchedule, TimeBudgetCallback, make_optimizer, with_encoder_rate  # noqa: E402
from nailseg.core.data.cache import open_source  # noqa: E402
from nailseg.stacks.keras.tfdata import GroupCounter, build_dataset  # noqa: E402

BEST, LAST = "best.weights.h5", "last.weights.h5"


def _has_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def resolve_policy(exp: Experiment) -> str:
    """``auto``: mixed_float16 on a GPU (with loss scaling), float32 on a CPU (core.runtime's rule)."""
    accelerator = resolve_accelerator(exp.trainer.accelerator, _has_gpu())
    # Keras: float16 with loss scaling on a GPU (its kernels prefer it), 32-bit on every CPU, no NHWC switch
    name = resolve_precision(exp.trainer.precision, accelerator, gpu_auto="16-mixed", channels_last_ok=False).name
    return {"32-true": "float32", "16-mixed": "mixed_float16", "bf16-mixed": "mixed_bfloat16"}[name]


class RunRecorder(keras.callbacks.Callback):
    """Per epoch: atomic last/best weights, and one ``metrics.jsonl`` line with the Lightning keys."""

    def __init__(self, ctx: TrainContext, steps_per_epoch: int, lr_at_epoch, counter: GroupCounter | None):
        super().__init__()
        self.ctx, self.run, self.steps, self.counter = ctx, ctx.run, steps_per_epoch, counter
        self.batch_size, self.lr_at_epoch = ctx.exp.trainer.batch_size, lr_at_epoch
        self.best = max((r["val_iou"] for r in read_jsonl(ctx.run.metrics) if r.get("val_iou") is not None),
                        default=-1.0)  # on resume, best.weights.h5 is only replaced by a better epoch
        self._t0 = self._train_end = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        if not getattr(self, "_started", False):  # a line staged before a kill: kept if its backup was written
            self._started = True
            self.ctx.recover_epoch(epoch)
            self.best = max((r["val_iou"] for r in read_jsonl(self.ctx.run.metrics) if r.get("val_iou") is not None),
                            default=self.best)  # the recovered line may hold the best epoch
        self._t0, self._train_end = time.perf_counter(), 0.0
        self._lr = self.lr_at_epoch(epoch)

    def on_test_begin(self, logs=None):
        if not self._train_end:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        now = time.perf_counter()
        # Validation runs after training in each epoch and resets the metrics first, so at this
        # point the confusion counts are the validation set's.
        confusion = find_confusion(self.model)
        if "val_loss" not in logs:
            val_scores = {}
        elif isinstance(confusion, ClassConfusion):  # val_iou is the mIoU, val_dice the mean Dice
            from nailseg.core.labels import class_scores

            result = class_scores(confusion.matrix.numpy(), self.ctx.exp.data.label_spec.names)
            val_scores = {"iou": result["miou"], "dice": result["mdice"]}
        else:
            val_scores = scores(*confusion.counts.numpy().tolist())
        train_time = (self._train_end or now) - self._t0
        record = EpochRecord(
            epoch=epoch, step=(epoch + 1) * self.steps, train_loss=logs.get("loss"), val_loss=logs.get("val_loss"),
            val_iou=val_scores.get("iou"), val_dice=val_scores.get("dice"), lr=self._lr,
            images_per_s=self.steps * self.batch_size / train_time if train_time > 0 else None,
            epoch_time_s=now - self._t0,
        )
        if self.counter is not None:
            record.extras["group_share"] = self.counter.take_shares()
        self.run.checkpoints.mkdir(parents=True, exist_ok=True)
        _save_weights(self.model, self.run.checkpoints / LAST)
        if record.val_iou is not None and record.val_iou > self.best:
            self.best = record.val_iou
            _save_weights(self.model, self.run.checkpoints / BEST)
        self.ctx.stage_epoch(record)  # committed by EpochCommit once BackupAndRestore has saved the epoch


class EpochCommit(keras.callbacks.Callback):
    """After ``BackupAndRestore``: the epoch is on the disk, so its staged line goes to ``metrics.jsonl``."""

    def __init__(self, ctx: TrainContext):
        super().__init__()
        self.ctx = ctx

    def on_epoch_end(self, epoch, logs=None):
        self.ctx.commit_epoch()


def _save_weights(model, path: Path) -> None:
    with atomic_path(path) as tmp:
        h5 = tmp.with_suffix(".weights.h5")  # Keras picks the format from the suffix
        model.save_weights(str(h5))
        os.replace(h5, tmp)


def _strategy(exp: Experiment):
    devices = exp.trainer.devices
    if devices == "auto" or (isinstance(devices, int) and devices > 1):
        gpus = tf.config.list_physical_devices("GPU")
        if len(gpus) > 1:
            names = [f"/gpu:{i}" for i in range(len(gpus) if devices == "auto" else devices)]
            return tf.distribute.MirroredStrategy(names)
    return tf.distribute.get_strategy()


class KerasStack:
    spec = STACKS["keras"]

    def preflight(self, exp: Experiment) -> None:
        if exp.trainer.accelerator in ("gpu", "cuda") and not _has_gpu():
            raise ConfigError(f"trainer.accelerator={exp.trainer.accelerator}: TensorFlow sees no GPU on this machine")
        check_sm_model(exp.model)

    def resumable(self, run: RunDir) -> Path | None:
        backup = run.checkpoints / "backup"
        return backup if backup.is_dir() and any(backup.iterdir()) else None

    def eject(self, exp: Experiment, pairs: dict, out: Path, config_name: str) -> list[Path]:
        """The experiment as a plain tf.keras + sm script in ``out`` (``stacks/keras/eject.py``)."""
        from nailseg.stacks.keras.eject import write_script

        return write_script(exp, pairs, out, config_name)

    def fit(self, ctx: TrainContext) -> FitResult:
        exp, run = ctx.exp, ctx.run
        t = exp.trainer
        keras.utils.set_random_seed(t.seed)
        policy = resolve_policy(exp)
        keras.mixed_precision.set_global_policy(policy)
        labels = exp.data.label_spec  # many classes: class-index masks, softmax, a confusion matrix
        ignore = None if labels is None else labels.ignore_index
        grouping = ctx.grouping()
        counter = GroupCounter(grouping.names) if grouping is not None else None
        drop = ctx.drop_last
        steps = ctx.epoch_size // t.batch_size if drop else -(-ctx.epoch_size // t.batch_size)
        train_ds = build_dataset(ctx.train_pairs, exp.augment.train, exp.data.size_hw, batch_size=t.batch_size,
                                 train=True, seed=t.seed, pipeline=exp.pipeline, grouping=grouping, counter=counter,
                                 drop_remainder=drop, source=open_source(exp.data, ctx.train_pairs, "train", run.path,
                                                                         pipeline=exp.pipeline),
                                 norm=exp.normalization, ignore_index=ignore, crop=exp.data.crop_hw)
        if grouping is None:
            train_ds = train_ds.repeat()  # steps_per_epoch sets the epoch, as with balancing
        val_ds = build_dataset(ctx.val_pairs, [], exp.data.size_hw, batch_size=t.batch_size, train=False,
                               seed=t.seed, pipeline=exp.pipeline,
                               source=open_source(exp.data, ctx.val_pairs, "val", run.path, pipeline=exp.pipeline),
                               norm=exp.normalization, ignore_index=ignore)
        if isinstance(t.limit_train_batches, int):
            steps = min(steps, t.limit_train_batches)
        # sized to trainer.max_time's plan when a resume keeps one (else to max_epochs, until the budget plans)
        schedule = EpochSchedule.build(exp, steps, ctx.budget.epochs if ctx.budget is not None else None)
        with _strategy(exp).scope():
            # Trained on windows (data.crop_size), validated on whole pictures: one network for any
            # input size (its convolutions do not care; the saved weights load into a fixed-size model).
            model = build_sm_model(exp.model, exp.data.size_hw if exp.data.crop_hw is None else (None, None))
            model = with_encoder_rate(model, exp, schedule, policy)  # optim.encoder_lr_scale: a second optimiser
            opt = make_optimizer(exp, schedule)
            if policy == "mixed_float16":
                opt = keras.mixed_precision.LossScaleOptimizer(opt)
            if labels is None:
                loss = build_sm_loss(exp.loss)
                metrics = [sm.metrics.IOUScore(threshold=0.5), sm.metrics.FScore(threshold=0.5), ConfusionCounts()]
            else:
                loss = build_sm_loss(exp.loss, labels.n, labels.ignore_index, ctx.data.class_weights)
                metrics = [ClassConfusion(labels.n, labels.ignore_index)]
            model.compile(optimizer=opt, loss=loss, metrics=metrics)
        callbacks = [RunRecorder(ctx, steps, schedule.at_epoch, counter)]
        if ctx.budget is not None:  # before BackupAndRestore: a trimmed plan is in budget.json before the epoch's backup
            callbacks.append(TimeBudgetCallback(ctx, schedule))
        if exp.logging.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.path / "tb"), update_freq="epoch"))
        if exp.logging.wandb.enabled:
            from nailseg.core.optional import require

            wandb = require("wandb", "wandb", "Weights & Biases logging")
            from wandb.integration.keras import WandbMetricsLogger

            wandb.init(project=exp.logging.wandb.project, name=run.path.name, dir=str(run.path),
                       mode=exp.logging.wandb.mode, config=exp.to_dict(), resume="allow")
            callbacks.append(WandbMetricsLogger())
        # After RunRecorder (which stages the epoch's line) and before EpochCommit (which writes it):
        # a line is never ahead of the backup a resume continues from.
        callbacks.append(keras.callbacks.BackupAndRestore(str(run.checkpoints / "backup"), delete_checkpoint=False))
        callbacks.append(EpochCommit(ctx))
        fit_started = time.perf_counter()
        epochs = ctx.budget.epochs if ctx.budget is not None else t.max_epochs  # a resume keeps its plan
        history = model.fit(train_ds, validation_data=val_ds, epochs=epochs, steps_per_epoch=steps,
                            callbacks=callbacks, verbose=1 if sys.stdout.isatty() else 2)
        fit_time = time.perf_counter() - fit_started
        records = read_jsonl(run.metrics)  # an epoch re-run after a kill has two lines until the engine dedupes
        return FitResult(
            epochs=len({r["epoch"] for r in records}), global_step=records[-1]["step"] if records else 0,
            fit_time_s=fit_time,
            precision=policy, parameters=int(model.count_params()), device=_device_name(), world_size=1,
            versions={"nailseg": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
                      "tf_keras": keras.__version__, "segmentation_models": sm.__version__},
            extras={"keras_epochs_run": len(history.epoch),
                    # provider, package version and SHA-256, or the file's (as the Lightning stack records)
                    **({"encoder_weights": model.nailseg_weights} if not ctx.resume else {})})

    def load_model(self, run: RunDir, exp: Experiment, checkpoint: str = "best"):
        keras.mixed_precision.set_global_policy("float32")
        model = build_sm_model(exp.model.model_copy(update={"encoder_weights": "none"}), exp.data.size_hw)

        def load(path: Path):  # .weights.h5 holds arrays only: loading it runs no code
            try:
                model.load_weights(str(path))
            except (OSError, ValueError, KeyError) as err:
                raise ConfigError(f"{path}: corrupt or truncated weights file ({str(err).splitlines()[0][:120]})") from None
            return model

        return load_with_fallback(run, checkpoint, run.checkpoints / BEST, run.checkpoints / LAST, load)

    def load_predictor(self, run: RunDir, exp: Experiment, checkpoint: str = "best") -> Predictor:
        model = self.load_model(run, exp, checkpoint)
        many_classes = exp.data.label_spec is not None

        def predict(image: np.ndarray) -> np.ndarray:
            """The foreground probability (H, W), or class probabilities (H, W, C) with ``data.classes``."""
            x = model_input(image, exp.data.size_hw, exp.normalization)
            out = np.asarray(model(x[None], training=False))[0]
            return at_image_size(out if many_classes else out[..., 0], image)

        return predict

    def export(self, run: RunDir, exp: Experiment, fmt: str, out: Path | None = None) -> Path:
        """``savedmodel``: a TensorFlow SavedModel folder (serving signature); ``keras``: a ``.keras`` file."""
        if fmt == "onnx":
            raise ConfigError("--format onnx: no maintained TensorFlow-to-ONNX converter supports TensorFlow 2.21 "
                              "(tf2onnx stops at older releases); export --format tflite or savedmodel instead")
        if fmt not in self.spec.exports:
            raise ConfigError(f"--format {fmt}: the keras stack exports {', '.join(self.spec.exports)}")
        model = self.load_model(run, exp)
        if fmt == "tflite":
            return export_verified_tflite(self, model, run, exp, Path(out or run.path / "model.tflite"))
        if fmt == "savedmodel":
            out = Path(out or run.path / "savedmodel")
            with atomic_dir(out) as tmp:
                tf.saved_model.save(model, str(tmp))
            return out
        out = Path(out or run.path / "model.keras")
        with atomic_path(out) as tmp:
            k = tmp.with_suffix(".keras")
            model.save(str(k))
            os.replace(k, tmp)
        return out


class TfliteSegmenter:
    """A ``.tflite`` export on TensorFlow Lite's interpreter, as a predictor (for verification)."""

    def __init__(self, path: Path, size_hw: tuple[int, int]):
        self.interpreter = tf.lite.Interpreter(model_path=str(path))
        self.interpreter.allocate_tensors()
        self.size_hw = size_hw
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import cv2

        h, w = self.size_hw
        self.interpreter.set_tensor(self.input, cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)[None])
        self.interpreter.invoke()
        return at_image_size(self.interpreter.get_tensor(self.output)[0], image)


def export_verified_tflite(stack: KerasStack, model, run: RunDir, exp: Experiment, out: Path) -> Path:
    """TF's own converter on a function that takes ``uint8`` RGB (1, h, w, 3) at the training size
    and returns the probability (1, h, w), normalisation inside; verified with the interpreter
    against the Keras model on the run's validation images (``export.json``)."""
    from nailseg.core.io import write_json
    from nailseg.deploy.verify import compare_predictors, require_agreement, verification_images

    h, w = exp.data.size_hw
    many_classes = exp.data.label_spec is not None
    mean = tf.constant(exp.normalization.mean, tf.float32) * 255.0  # the encoder's, as in training
    std = tf.constant(exp.normalization.std, tf.float32) * 255.0

    @tf.function(input_signature=[tf.TensorSpec([1, h, w, 3], tf.uint8, name="image")])
    def segment(image):
        x = (tf.cast(image, tf.float32) - mean) / std
        out = tf.cast(model(x, training=False), tf.float32)
        return {"probability": out if many_classes else out[..., 0]}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([segment.get_concrete_function()], model)
    blob = converter.convert()
    images, source = verification_images(run, exp)
    with atomic_path(out) as tmp:
        tmp.write_bytes(blob)
        check = compare_predictors(stack.load_predictor(run, exp), TfliteSegmenter(tmp, (h, w)), images)
        tolerance = require_agreement(check, "tflite", "Keras", source)
    write_json(out.parent / "export.json", {"format": "tflite", "file": str(out), "bytes": len(blob),
                                           "verified_on": source, **check, "tolerance": tolerance,
                                           "input": f"uint8 RGB (1, {h}, {w}, 3)",
                                           "output": (f"class probabilities float32 (1, {h}, {w}, "
                                                      f"{exp.data.label_spec.n})" if many_classes else
                                                      f"foreground probability float32 (1, {h}, {w})"),
                                           "tensorflow": tf.__version__, "nailseg": __version__})
    print(f"verified on {source}: max |diff| {check['max_abs_diff']:.2e}, mask agreement "
          f"{100 * check['mask_agreement']:.3f}% ({out.parent / 'export.json'})", file=sys.stderr)
    return out


def _device_name() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


STACK = KerasStack()
