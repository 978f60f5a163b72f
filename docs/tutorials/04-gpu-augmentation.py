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
# # Tutorial 4: augmentation on the GPU with kornia
#
# On a GPU, CPU-side augmentation often becomes the bottleneck: the data loader workers cannot
# warp images as fast as the GPU trains on them. kornia runs the same kind of augmentation as
# batched tensor ops on the batch's device. nailseg translates one augmentation spec from the
# config into albumentations (CPU, per image) and into kornia's `AugmentationSequential` (per
# batch, on the device), so switching is one line: `data.pipeline: kornia`.
#
# The data loader then only decodes and resizes (uint8), and the LightningModule augments in
# `on_after_batch_transfer`, after the batch reached the GPU. Without a GPU the same code runs on
# the CPU, which is what this notebook does when no CUDA device is there.

# %%
import json
from pathlib import Path

import numpy as np
import torch

from nailseg.config import load_experiment
from nailseg.core.data.decode import read_image, read_mask
from nailseg.core.data.discover import find_pairs
from nailseg.core.visualize import overlay
from nailseg.tutorial import budget, grid, overlays, real_data, record, sh, show, show_png, synth

data = real_data() or synth("data/synth-tutorial", n=48, size="192x144")
pairs, _ = find_pairs(data)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print("augmenting on", device, "(no CUDA device here: the same code on the CPU)" if device.type == "cpu" else "")

# %% [markdown]
# ## 1. One spec, two translations
#
# The spec is a list of ops in the config. Each op has one translation per pipeline, in a table
# whose keys are the ops that pipeline's row in `nailseg/specs.py` claims (a test holds the two
# together, and the config refuses an op a pipeline does not claim):

# %%
exp = load_experiment("configs/nails-pretrained-cpu.yaml", [f"data.root={data}", "data.image_size=192", "data.crop_size=null"])
for op in exp.augment.train:
    print(op)

# %%
from nailseg.core import augment
from nailseg.stacks.lightning.loaders import kornia as kornia_pipeline

show(augment.to_albumentations, ("nailseg.core.augment", "ALBUMENTATIONS_OPS"))
show(("nailseg.stacks.lightning.loaders.kornia", "KORNIA_OPS"), kornia_pipeline.GpuAugment)

# %% [markdown]
# ## 2. `AugmentationSequential` on a batch on the device
#
# `data_keys=["input", "mask"]` makes kornia apply the *same* random geometry to the image and its
# mask; the mask is thresholded again afterwards, since warping interpolates it.

# %%
import cv2

h, w = exp.data.size_hw
batch = [cv2.resize(read_image(p.image), (w, h), interpolation=cv2.INTER_AREA) for p in pairs[:4]]
masks = [cv2.resize(read_mask(p.mask).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) for p in pairs[:4]]
images_t = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).to(device)        # uint8 (N, 3, H, W)
masks_t = torch.from_numpy(np.stack(masks))[:, None].to(device)                     # (N, 1, H, W)
gpu_augment = kornia_pipeline.GpuAugment(exp.augment.train, exp.data.size_hw, exp.normalization).to(device)
torch.manual_seed(0)
x, m = gpu_augment(images_t, masks_t, train=True)
print("kornia out:", tuple(x.shape), x.dtype, x.device, "| mask values", torch.unique(m).tolist())

mean, std = np.array(exp.normalization.mean), np.array(exp.normalization.std)
kornia_pictures = [overlay(np.clip((xi.permute(1, 2, 0).cpu().numpy() * std + mean) * 255, 0, 255).astype(np.uint8),
                           mi[0].cpu().numpy() > 0.5, with_legend=False) for xi, mi in zip(x, m)]

# %% [markdown]
# ## 3. The same spec in albumentations, side by side

# %%
albu = augment.to_albumentations(exp.augment.train, exp.data.size_hw, train=True, normalize=False)
albu.set_random_seed(0)
albu_pictures = []
for p in pairs[:4]:
    out = albu(image=read_image(p.image), mask=read_mask(p.mask).astype(np.uint8))
    albu_pictures.append(overlay(out["image"], out["mask"] > 0, with_legend=False))
grid(albu_pictures + kornia_pictures, [f"albumentations #{i}" for i in range(4)] + [f"kornia #{i}" for i in range(4)],
     cols=4, width=2.8, suptitle="one augmentation spec: albumentations (top, CPU) and kornia (bottom, on the device)")

# %% [markdown]
# ## 4. Train with `data.pipeline: kornia`

# %%
EPOCHS = budget(full=10, test=4)  # the test suite sets NAILSEG_TUTORIAL_BUDGET=test
run = Path(sh(f"nailseg train configs/nails-pretrained-cpu.yaml data.root={data} data.pipeline=kornia "
              "model.encoder=tu-tf_efficientnet_lite0 data.image_size=160 data.crop_size=null data.split.val=0.15 data.split.test=0.2 "
              f"trainer.max_epochs={EPOCHS} optim.lr=0.002 optim.warmup_epochs=1", tail=4))
show_png(run / "curves.png")
sh(f"nailseg eval {run} --split test --overlays {run}/test-overlays --quiet")
overlays(run / "test-overlays", n=2)
record(test_iou=json.loads((run / "eval.json").read_text())["iou"])

# %% [markdown]
# ## 5. Which pipeline is faster here?
#
# `nailseg bench loaders` times each pipeline on the same photos (JSON + a bar chart). On a CPU
# kornia competes with the loader workers for the same cores; on a GPU it frees them:

# %%
sh(f"nailseg bench loaders --data {data} --size 192 --batch 8 --batches 3 --repeats 1 --pipelines cpu,kornia "
   "--out bench-kornia", tail=6)
show_png(sorted(Path("bench-kornia").glob("*.png"))[-1], width=6)

# %% [markdown]
# Measured figures, including a GPU where one was used: [results](../results.md).
