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
# # Tutorial 5: NVIDIA DALI inside Lightning
#
# `data.pipeline: dali` replaces the torch `DataLoader` with an NVIDIA DALI pipeline that reads,
# decodes and augments in one graph. On a GPU the JPEG decode runs on the device
# (`decoders.image(device="mixed")`: nvJPEG, with the hardware JPEG engine for baseline JPEGs) and
# so does the augmentation. Without a GPU the same pipeline runs on the CPU (`device_id=None`),
# which is what this notebook does here. Install with `pip install -e '.[dali]'`
# (the `nvidia-dali-cuda130` wheel also runs on CPU-only machines).

# %%
import json
from pathlib import Path

import numpy as np
import torch

from nailseg.config import load_experiment
from nailseg.core.data.discover import find_pairs
from nailseg.core.visualize import overlay
from nailseg.tutorial import budget, grid, overlays, real_data, record, sh, show, show_png, synth

data = real_data() or synth("data/synth-tutorial", n=48, size="192x144")
pairs, _ = find_pairs(data)
on_gpu = torch.cuda.is_available()
print("DALI on the", "GPU (mixed decode)" if on_gpu else "CPU (no CUDA device here; on a GPU the same code decodes with nvJPEG)")

# %% [markdown]
# ## 1. The `pipeline_def`
#
# Two file readers (images and masks) share one seed, sharding and per-epoch shuffle, so they
# stay aligned sample for sample. `fn.decoders.image` decodes (on the GPU with `device="mixed"`);
# geometric ops draw their random values once per sample and apply them to the image and the mask
# (nearest neighbour for the mask); colour ops touch the image only; then normalisation with the
# encoder's mean/std and the CHW layout.

# %%
from nailseg.stacks.lightning.loaders import dali as dali_pipeline

show(dali_pipeline.build_pipeline, dali_pipeline._dali_affine, dali_pipeline._dali_brightness_contrast)

# %% [markdown]
# ## 2. Run the pipeline and look at a batch

# %%
exp = load_experiment("configs/nails-pretrained-cpu.yaml", [f"data.root={data}", "data.image_size=192", "data.crop_size=null"])
pipe = dali_pipeline.build_pipeline([str(p.image) for p in pairs[:8]], [str(p.mask) for p in pairs[:8]],
                                    exp.augment.train, exp.data.size_hw, batch_size=4, train=True, seed=0, shard_id=0,
                                    num_shards=1, device_id=0 if on_gpu else None, num_threads=2, norm=exp.normalization)
pipe.build()
images, masks = pipe.run()
images = np.stack([np.asarray(images.as_cpu()[i]) for i in range(4)])
masks = np.stack([np.asarray(masks.as_cpu()[i]) for i in range(4)])
print("DALI out:", images.shape, images.dtype, "| masks", masks.shape, np.unique(masks))
mean, std = np.array(exp.normalization.mean)[:, None, None], np.array(exp.normalization.std)[:, None, None]
pictures = [overlay(np.clip((im * std + mean) * 255, 0, 255).astype(np.uint8).transpose(1, 2, 0), m[0] > 0.5,
                    with_legend=False) for im, m in zip(images, masks)]
grid(pictures, [f"DALI #{i}" for i in range(4)], cols=4, width=2.8, suptitle="a DALI batch: augmented image and mask")

# %% [markdown]
# ## 3. `DALIGenericIterator` inside a Lightning `DataModule`
#
# `DaliLoader` wraps the pipeline in `DALIGenericIterator` and yields `{"image", "mask"}` batches,
# the same dictionaries the torch loader yields, so the LightningModule does not know which
# pipeline fed it. Under DDP each rank reads its own shard (`shard_id=rank, num_shards=world`).
#
# The traps it handles:
#
# - `__len__` is right (with `size=-1` the iterator's length is 0 and Lightning skips the epoch);
# - an epoch that Lightning stops early (`limit_train_batches`) is drained before the next one,
#   because DALI ignores a reset before an epoch's end;
# - the last partial batch follows the `DataLoader`'s rule (`LastBatchPolicy.DROP` or `PARTIAL`);
# - balanced sampling needs the torch sampler, so the config refuses `data.balance` with DALI.

# %%
show(dali_pipeline.DaliLoader)

# %% [markdown]
# ## 4. Train with `data.pipeline: dali`

# %%
EPOCHS = budget(full=10, test=4)  # the test suite sets NAILSEG_TUTORIAL_BUDGET=test
run = Path(sh(f"nailseg train configs/nails-pretrained-cpu.yaml data.root={data} data.pipeline=dali "
              "model.encoder=tu-tf_efficientnet_lite0 data.image_size=160 data.crop_size=null data.split.val=0.15 data.split.test=0.2 "
              f"trainer.max_epochs={EPOCHS} optim.lr=0.002 optim.warmup_epochs=1", tail=4))
show_png(run / "curves.png")
sh(f"nailseg eval {run} --split test --overlays {run}/test-overlays --quiet")
overlays(run / "test-overlays", n=2)
record(test_iou=json.loads((run / "eval.json").read_text())["iou"])

# %% [markdown]
# ## 5. DALI against the DataLoader
#
# Without a GPU, DALI runs in CPU mode and competes with training for the same cores; its main
# value is on a GPU, where the decode moves to the device. The figures below are this machine's,
# at a tiny size; measure yours with `nailseg bench loaders` (JSON + a bar chart):

# %%
sh(f"nailseg bench loaders --data {data} --size 192 --batch 8 --batches 3 --repeats 1 --pipelines cpu,dali "
   "--out bench-dali", tail=6)
show_png(sorted(Path("bench-dali").glob("*.png"))[-1], width=6)

# %% [markdown]
# GPU figures and the full comparison: [results](../results.md).
