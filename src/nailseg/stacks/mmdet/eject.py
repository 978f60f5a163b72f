"""``nailseg eject`` for the MMDetection stack: the experiment as a plain MMDetection folder that
imports nothing of nailseg.

- ``mask_rcnn.py``: the MMDetection config nailseg trains with (``config.build_mmdet_config``),
  written whole (no ``_base_``) as Python, in its keys' own order; only its paths and the
  backbone's registry name change, so what the script trains is what nailseg trains.
- ``augmentation.py`` (an augmentation beyond flips): ``SeededAlbu`` and ``BoxesFromMasks``, registered
  in MMDetection's ``TRANSFORMS``.
- ``timm_backbone.py`` (timm encoders): the backbone registered in MMDetection's ``MODELS`` (the very
  class nailseg's own backbone extends with its weights provider), with the encoder's starting
  weights as nailseg loaded them in ``encoder_weights.pt``.
- ``train.py``: masks -> COCO instances with pycocotools, then ``Runner.from_cfg(cfg).train()``.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from string import Template

from nailseg.config import Experiment
from nailseg.core.data.discover import Pair
from nailseg.errors import ConfigError

TEMPLATES = Path(__file__).with_name("templates")
WEIGHTS_FILE = "encoder_weights.pt"
HEADER = '''# Mask R-CNN (MMDetection), written by `nailseg eject` from {config}: a whole MMDetection config,
# no _base_, loaded by mmengine's Config.fromfile ({{{{fileDirname}}}} is this folder). train.py writes
# coco/*.json from split.json and trains it with Runner.from_cfg; MMDetection's tools/train.py takes it too.
# Photos are resized to fit {size} px; the learning rate warms up, then follows the schedule per iteration
# ({iters} iterations an epoch, {epochs} epochs).

'''


def refusals(exp: Experiment) -> list[str]:
    """What the ejected folder cannot express yet, one line per key."""
    lines = []
    if exp.data.label_spec is not None:
        lines.append("data.classes: eject writes one category (nail) from binary masks")
    if exp.model.load_from not in ("", "none"):
        lines.append("model.load_from: eject starts from the encoder's weights only")
    if exp.data.balance is not None:
        lines.append("data.balance: eject writes MMDetection's plain shuffled sampler")
    return lines


def _encoder_weights(exp: Experiment, out: Path) -> str:
    """The timm encoder's starting tensors as nailseg loads them (``none``: random)."""
    if not exp.model.encoder.startswith("tu-") or exp.model.encoder_weights in ("", "none"):
        return "none"
    import torch

    from nailseg.stacks.mmdet.backbone import TimmBackbone

    backbone = TimmBackbone(exp.model.encoder, exp.model.encoder_weights)
    backbone.init_weights()  # the installed package (SHA-256 checked) or the local file, as training does
    torch.save(backbone.net.state_dict(), out / WEIGHTS_FILE)
    return WEIGHTS_FILE


def _plain_config(exp: Experiment, pairs: dict[str, list[Pair]], iters_per_epoch: int, weights: str) -> dict:
    """nailseg's config with the ejected folder's paths: ``{{fileDirname}}/coco/<part>.json``, the
    photos' common folder as ``data_root``, and ``TimmBackbone`` from ``timm_backbone.py``."""
    from nailseg.stacks.mmdet.config import build_mmdet_config

    images = [str(p.image.resolve()) for part in pairs.values() for p in part]
    data_root = Path(os.path.commonpath(images))
    data_root = data_root if data_root.is_dir() else data_root.parent
    ann = {part: Path(f"{{{{fileDirname}}}}/coco/{part}.json") for part in ("train", "val", "test")}
    cfg = build_mmdet_config(exp, work_dir=Path("work_dir"), images_dir=data_root, ann_files=ann,
                             iters_per_epoch=iters_per_epoch, on_gpu=False, launcher="none")
    backbone = cfg["model"]["backbone"]
    imports = []  # the template modules the config imports (custom_imports), copied beside it
    if backbone["type"] == "NailsegTimmBackbone":
        backbone.update(type="TimmBackbone", encoder=exp.model.encoder[3:], weights=weights)
        imports.append("timm_backbone")
    if any(step["type"] == "SeededAlbu" for step in cfg["train_dataloader"]["dataset"]["pipeline"]):
        imports.append("augmentation")
    if imports:
        cfg["custom_imports"] = dict(imports=imports, allow_failed_imports=False)
    else:
        cfg.pop("custom_imports")
    if not pairs.get("test"):
        for key in ("test_dataloader", "test_evaluator", "test_cfg"):
            cfg.pop(key)
    return cfg


def python_literal(value, indent: int = 0, lead: int = 0, width: int = 110) -> str:
    """``value`` as MMDetection configs are written by hand: ``dict(key=...)`` in the keys' own order,
    on one line where it fits in ``width`` (after ``lead`` characters at ``indent``), else one item a
    line, four spaces deeper (mmengine's ``pretty_text`` sorts the keys and breaks every list)."""
    flat = _inline(value)
    if indent + lead + len(flat) <= width or not isinstance(value, (dict, list, tuple)) or not value:
        return flat
    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(value, dict):
        named = all(str(k).isidentifier() for k in value)
        items = [f"{inner}{_key(k)}{python_literal(v, indent + 4, len(_key(k)), width)}" for k, v in value.items()]
        return ("dict(\n" if named else "{\n") + ",\n".join(items) + (f",\n{pad})" if named else f",\n{pad}}}")
    items = [f"{inner}{python_literal(v, indent + 4, 0, width)}" for v in value]
    opening, closing = ("[", "]") if isinstance(value, list) else ("(", ")")
    return opening + "\n" + ",\n".join(items) + f",\n{pad}{closing}"


def _key(key) -> str:
    return f"{key}=" if str(key).isidentifier() else f"{key!r}: "


def _inline(value) -> str:
    if isinstance(value, dict):
        if all(str(k).isidentifier() for k in value):
            return "dict(" + ", ".join(f"{k}={_inline(v)}" for k, v in value.items()) + ")"
        return "{" + ", ".join(f"{k!r}: {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_inline(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, Path):
        return repr(str(value))
    if isinstance(value, float):
        return repr(float(f"{value:.10g}"))  # 2e-06, not 2.0000000000000003e-06
    return repr(value)


def write_folder(exp: Experiment, pairs: dict[str, list[Pair]], out: Path, config_name: str) -> list[Path]:
    """Write ``mask_rcnn.py``, ``train.py``, ``split.json``, ``README.md`` (and the template modules the
    config imports: ``timm_backbone.py`` with its starting weights for a timm encoder, ``augmentation.py``
    for an augmentation beyond flips) into ``out``."""
    from nailseg.core.eject import write_split

    problems = refusals(exp)
    if problems:
        raise ConfigError(problems)
    t = exp.trainer
    iters_per_epoch = max(1, math.ceil(len(pairs["train"]) / t.batch_size))
    if isinstance(t.limit_train_batches, int):
        iters_per_epoch = min(iters_per_epoch, t.limit_train_batches)
    weights = _encoder_weights(exp, out)
    cfg = _plain_config(exp, pairs, iters_per_epoch, weights)
    header = HEADER.format(config=config_name, size=max(exp.data.size_hw), iters=iters_per_epoch, epochs=t.max_epochs)
    body = "\n".join(f"{key} = {python_literal(value, 0, len(key) + 3)}" for key, value in cfg.items())
    (out / "mask_rcnn.py").write_text(header + body + "\n", encoding="utf-8")
    imports = cfg.get("custom_imports", {}).get("imports", [])
    for module in imports:
        shutil.copy(TEMPLATES / f"{module}.py", out / f"{module}.py")
    encoder = exp.model.encoder
    script = Template((TEMPLATES / "train.py.tmpl").read_text(encoding="utf-8")).substitute(
        title=f"Train {config_name}: MMDetection Mask R-CNN on {encoder[3:] if encoder.startswith('tu-') else encoder}.",
        config=config_name, epochs=t.max_epochs, iters_per_epoch=iters_per_epoch, min_area=exp.model.min_area)
    (out / "train.py").write_text(script, encoding="utf-8")
    write_split(pairs, out)
    (out / "README.md").write_text(README.format(
        config=config_name, epochs=t.max_epochs, albumentations=" 'albumentations>=2.0'" if "augmentation" in imports else "",
        backbone=("- `timm_backbone.py`: the timm encoder registered in MMDetection's `MODELS` (the config's "
                  "`custom_imports`)\n" if "timm_backbone" in imports else "")
        + ("- `augmentation.py`: `SeededAlbu` (MMDetection's albumentations step, seeded) and `BoxesFromMasks` "
           "(boxes set from the moved masks), in the config's `custom_imports`\n" if "augmentation" in imports else ""),
        weights=f"- `{WEIGHTS_FILE}`: the encoder's starting weights ({exp.model.encoder_weights}), as nailseg "
                "loaded them\n" if weights != "none" else ""), encoding="utf-8")
    return sorted(out.iterdir())


README = """# {config}, as a plain MMDetection folder

Written by `nailseg eject`. Nothing here imports nailseg.

```console
pip install torch mmengine mmcv mmdet pycocotools timm opencv-python-headless pillow{albumentations}
python train.py                 # {epochs} epochs; OUT/metrics.json holds COCO bbox and segm mAP on val (and test)
python train.py --epochs 2 --out work_dirs/quick
```

- `mask_rcnn.py`: the whole MMDetection config (model, data pipelines, schedule, hooks), no `_base_`
- `train.py`: masks -> COCO instances (`coco/*.json`, pycocotools RLE), then `Runner.from_cfg(cfg).train()`
- `split.json`: the image and mask files of the train, val and test parts, as `nailseg train` splits them
{backbone}{weights}"""
