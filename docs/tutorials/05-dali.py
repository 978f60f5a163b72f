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
from nailseg.tutorial import budget, grid, overlays, real_data, record, sh, show_png, synth

data = real_data() or synth("data/synth-tutorial", n=48, size="192x144")
pairs, _ = find_pairs(data)
on_gpu = torch.cuda.is_available()
print("DALI on the", "GPU (mixed decode)" if on_gpu else "CPU (no CUDA device here; on a GPU the same code decodes with nvJPEG)")

# %% [markdown]
# ## 1. The experiment as plain code: `nailseg eject`
#
# `nailseg eject` writes this experiment as a plain Lightning script, `ejected/train.py`, and
# copies beside it `dali_pipeline.py`: the DALI pipeline and its Lightning iterable in DALI's own
# code, the very file nailseg's `data.pipeline: dali` runs (nailseg only feeds it its pairs,
# normalisation and DDP rank). Every piece of DALI code below is printed from that file, and
# section 4 trains the script.

# %%
import importlib.util
import shutil

EPOCHS = budget(full=10, test=4)  # the test suite sets NAILSEG_TUTORIAL_BUDGET=test
EXPERIMENT = (f"configs/nails-pretrained-cpu.yaml data.root={data} data.pipeline=dali "
              "model.encoder=tu-tf_efficientnet_lite0 data.image_size=160 data.crop_size=null data.split.val=0.15 "
              f"data.split.test=0.2 trainer.max_epochs={EPOCHS} optim.lr=0.002 optim.warmup_epochs=1")
shutil.rmtree("ejected", ignore_errors=True)
sh(f"nailseg eject {EXPERIMENT} --out ejected", tail=7)
dali_code = Path("ejected/dali_pipeline.py").read_text()
spec = importlib.util.spec_from_file_location("ejected_train", "ejected/train.py")
ejected = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ejected)  # importing trains nothing; it puts ejected/ on the path for dali_pipeline
import dali_pipeline  # noqa: E402  (the copy beside the script)


def part(text: str, start: str, end: str) -> None:
    """Print a file from one marker to the next."""
    print(text[text.index(start):text.index(end)].rstrip())


# %% [markdown]
# ## 2. The `pipeline_def`
#
# Two file readers (images and masks) share one seed, sharding and per-epoch shuffle, so they
# stay aligned sample for sample. `fn.decoders.image` decodes (on the GPU with `device="mixed"`);
# geometric ops draw their random values once per sample and apply them to the image and the mask
# (nearest neighbour for the mask); colour ops touch the image only; then normalisation with the
# encoder's mean/std and the CHW layout:

# %%
part(dali_code, "def build_pipeline", "class DaliLoader")

# %% [markdown]
# Each op of the spec is one function of DALI ops, drawn per sample. The affine's matrix is built
# with `fn.transforms` around the picture's centre, on OpenCV's pixel grid, so it moves the pixels
# exactly where albumentations would; the script's `OPS` are the spec's ops as plain objects:

# %%
part(dali_code, "def coin", "def flip")
part(dali_code, "def affine", "def hue_saturation")
part(Path("ejected/train.py").read_text(), "OPS = [", "class PairDataset")

# %% [markdown]
# ## 3. Run the pipeline and look at a batch

# %%
pipe = dali_pipeline.build_pipeline([str(p.image) for p in pairs[:8]], [str(p.mask) for p in pairs[:8]],
                                    ejected.OPS, ejected.IMAGE_SIZE, batch_size=4, train=True, seed=0,
                                    mean=ejected.MEAN, std=ejected.STD, device_id=0 if on_gpu else None,
                                    num_threads=2)
pipe.build()
images, masks = pipe.run()
images = np.stack([np.asarray(images.as_cpu()[i]) for i in range(4)])
masks = np.stack([np.asarray(masks.as_cpu()[i]) for i in range(4)])
print("DALI out:", images.shape, images.dtype, "| masks", masks.shape, np.unique(masks))
mean, std = np.array(ejected.MEAN)[:, None, None], np.array(ejected.STD)[:, None, None]
pictures = [overlay(np.clip((im * std + mean) * 255, 0, 255).astype(np.uint8).transpose(1, 2, 0), m[0] > 0.5,
                    with_legend=False) for im, m in zip(images, masks)]
grid(pictures, [f"DALI #{i}" for i in range(4)], cols=4, width=2.8, suptitle="a DALI batch: augmented image and mask")

# %% [markdown]
# ## 4. `DALIGenericIterator` inside a Lightning `DataModule`
#
# `DaliLoader` wraps the pipeline in `DALIGenericIterator` and yields `{"image", "mask"}` batches,
# the same dictionaries a torch `DataLoader` yields, so the LightningModule does not know which
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
part(dali_code, "class DaliLoader", "    def __iter__")
part(Path("ejected/train.py").read_text(), "class PairDataModule", "# ---- the model")

# %% [markdown]
# `nailseg train` trains the same experiment in one line:

# %%
run = Path(sh(f"nailseg train {EXPERIMENT}", tail=4))
show_png(run / "curves.png")
sh(f"nailseg eval {run} --split test --overlays {run}/test-overlays --quiet")
overlays(run / "test-overlays", n=2)
test_iou = json.loads((run / "eval.json").read_text())["iou"]

# %% [markdown]
# And the ejected script, trained by Lightning and DALI alone (`python ejected/train.py`); it draws
# its own random augmentations, so its IoU differs from the run above by chance (by 0.1 or more
# either way, on eight test photos after a few epochs). At the test budget
# (4 epochs of 160 px) both are short of what the published 10 epochs reach:

# %%
sh("python ejected/train.py --out ejected/out", tail=1, env={"PYTHONWARNINGS": "ignore"})
ejected_test_iou = json.loads(Path("ejected/out/metrics.json").read_text())["test"]["iou"]
print(f"test IoU at each photo's own size: plain Lightning + DALI script {ejected_test_iou:.3f}, "
      f"nailseg train {test_iou:.3f}")
record(test_iou=test_iou, ejected_test_iou=ejected_test_iou)

# %% [markdown]
# ## 5. DALI against the DataLoader
#
# Without a GPU, DALI runs in CPU mode and competes with training for the same cores; its main
# value is on a GPU, where the decode moves to the device. The figures below are this machine's,
# three batches timed once: a demonstration of the command, not a measurement (the `cpu` row moves
# by half from run to run). Measure yours with `nailseg bench loaders --batches 20 --repeats 3`
# (JSON + a bar chart):

# %%
sh(f"nailseg bench loaders --data {data} --size 192 --batch 8 --batches 3 --repeats 1 --pipelines cpu,dali "
   "--out bench-dali", tail=6)
show_png(sorted(Path("bench-dali").glob("*.png"))[-1], width=6)

# %% [markdown]
# GPU figures and the full comparison: [results](../results.md).
