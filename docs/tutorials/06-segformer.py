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
# # Tutorial 6: SegFormer from Hugging Face transformers, trained with Lightning
#
# `SegformerForSemanticSegmentation` is a transformer encoder (Mix Transformer, "MiT") with a
# light all-MLP decoder. nailseg wraps it in the same `LightningModule` as the smp models, so
# the loss, the schedule, the metrics, the checkpoints and the evaluation are shared. This notebook
# shows:
#
# - the model built from a `SegformerConfig` (or `from_pretrained` on a local folder or the cache);
# - why its logits are upsampled, and the label layout;
# - training it, and `save_pretrained` for the exported model.
#
# Install with `pip install -e '.[hf]'`.

# %%
from pathlib import Path

import torch

from nailseg.config import load_experiment
from nailseg.tutorial import budget, overlays, real_data, sh, show, show_png, synth

data = real_data() or synth("data/synth-tutorial", n=48, size="192x144")

# %% [markdown]
# ## 1. The model
#
# `model.pretrained: none` builds the architecture from a `SegformerConfig` (random weights);
# `model.pretrained: nvidia/mit-b0` or a folder written by `save_pretrained` loads weights with
# `from_pretrained(..., ignore_mismatched_sizes=True)`, which replaces the 150-class ADE20K head
# with ours. Offline, nailseg looks in the local Hugging Face cache and says so when the weights
# are not there.

# %%
from nailseg.stacks.lightning import segformer

show(segformer.segformer_config, segformer.build_segformer)

# %% [markdown]
# ## 2. Upsampling the logits, and the label layout
#
# SegFormer predicts at 1/4 of the input size. The wrapper upsamples its logits bilinearly to the
# input size, so that the loss and the metrics see the same shapes as with any smp model. For one
# class (`nail`) the head has one channel read through a sigmoid; with `model.classes: K` it has K
# channels and a softmax, with `id2label` naming them.

# %%
show(segformer.HfSegmenter, segformer.SegformerSegmenter)
exp = load_experiment("configs/segformer-b0-cpu.yaml", [f"data.root={data}"])
net = segformer.build_segformer(exp.model)
with torch.no_grad():
    raw = net.hf(pixel_values=torch.zeros(1, 3, 128, 128)).logits
    up = net(torch.zeros(1, 3, 128, 128))
print("SegFormer-b0:", sum(p.numel() for p in net.parameters()) / 1e6, "M parameters")
print("raw logits", tuple(raw.shape), "-> upsampled", tuple(up.shape), "| id2label", net.hf.config.id2label)

# %% [markdown]
# ## 3. Inside the LightningModule
#
# The family only changes what `build_model` returns; `training_step` is the one every torch model
# uses. The encoder gets `optim.encoder_lr_scale` (0.1 here) times the decoder's learning rate:

# %%
from nailseg.stacks.lightning import models
from nailseg.stacks.lightning.module import SegmentationModule

show(models.build_model, SegmentationModule.training_step)

# %% [markdown]
# ## 4. Train, and `save_pretrained`
#
# From random weights on 40 photos a transformer learns slowly (no ImageNet here); the run shows
# the mechanics. At the end of training nailseg writes `RUN/hf/`, a `save_pretrained` folder any
# transformers user can load:

# %%
EPOCHS = budget(full=16, test=6)  # the test suite sets NAILSEG_TUTORIAL_BUDGET=test
run = Path(sh(f"nailseg train configs/segformer-b0-cpu.yaml data.root={data} data.split.val=0.15 data.split.test=0.2 "
              f"trainer.max_epochs={EPOCHS} optim.lr=0.002", tail=4))
show_png(run / "curves.png")
print(sorted(p.name for p in (run / "hf").iterdir()))

# %%
from transformers import SegformerForSemanticSegmentation

reloaded = SegformerForSemanticSegmentation.from_pretrained(run / "hf")
print(type(reloaded).__name__, "reloaded with", reloaded.config.num_labels, "label(s):", reloaded.config.id2label)

# %%
sh(f"nailseg eval {run} --split test --overlays {run}/test-overlays --quiet")
overlays(run / "test-overlays", n=2)

# %% [markdown]
# How SegFormer compares with the CNN stacks, measured: [results](../results.md).
