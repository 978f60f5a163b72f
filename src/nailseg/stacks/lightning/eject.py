"""``nailseg eject`` for the Lightning stack: the experiment as one plain Lightning + smp +
albumentations script (``templates/train.py.tmpl``) that imports nothing of nailseg.

What the script holds is rendered from the same objects nailseg trains with, never retyped: the
albumentations pipeline is nailseg's own ``Compose`` (``core.augment.to_albumentations``) written
back as code from albumentations' serialisation, the split is the one ``nailseg train`` would fix,
and ImageNet weights are the encoder's tensors as nailseg loads them (saved beside the script).
"""

from __future__ import annotations

from pathlib import Path
from string import Template

from nailseg.config import Experiment
from nailseg.core.eject import READERS, render_compose, write_split
from nailseg.core.data.discover import Pair
from nailseg.errors import ConfigError

TEMPLATE = Path(__file__).with_name("templates") / "train.py.tmpl"
WEIGHTS_FILE = "encoder_weights.pt"
LOSS_LINES = {
    "dice": "return self.dice(logits, mask)",
    "bce": "return self.bce(logits, mask)",
    "focal": "return smp.losses.FocalLoss(mode=\"binary\")(logits, mask)",
    "lovasz": "return smp.losses.LovaszLoss(mode=\"binary\", from_logits=True)(logits, mask)",
    "jaccard": "return smp.losses.JaccardLoss(mode=\"binary\", from_logits=True)(logits, mask)",
    "tversky": "return smp.losses.TverskyLoss(mode=\"binary\", from_logits=True)(logits, mask)",
}
OPTIMIZERS = {
    "adamw": "optimizer = torch.optim.AdamW(groups, lr=LR, weight_decay=WEIGHT_DECAY)",
    "adam": "optimizer = torch.optim.Adam(groups, lr=LR, weight_decay=WEIGHT_DECAY)",
    "sgd": "optimizer = torch.optim.SGD(groups, lr=LR, momentum=0.9, weight_decay=WEIGHT_DECAY)",
}


def refusals(exp: Experiment) -> list[str]:
    """What this script cannot express yet, one line per key (``nailseg eject`` refuses before writing)."""
    lines = []
    if exp.model.family != "smp":
        lines.append(f"model.family={exp.model.family}: eject writes smp models (family smp) on this stack")
    if exp.pipeline != "albumentations":
        lines.append(f"data.pipeline={exp.pipeline}: eject writes the albumentations pipeline; "
                     "train this experiment with data.pipeline: albumentations to eject it")
    if getattr(exp.model, "classes", 1) != 1:
        lines.append("model.classes: eject writes binary models (one logit + sigmoid)")
    if str(getattr(exp.model, "init_from", "none")) not in ("", "none") or exp.pretrain is not None:
        lines.append("model.init_from / pretrain: eject starts from the encoder's weights only")
    if exp.data.balance is not None:
        lines.append("data.balance: eject writes a plain shuffled DataLoader")
    if exp.optim.freeze_encoder_bn:
        lines.append("optim.freeze_encoder_bn: not written by eject")
    return lines


def _encoder_weights(exp: Experiment, out: Path) -> str | None:
    """The encoder's starting tensors as nailseg loads them, saved beside the script (``None``: random)."""
    if str(exp.model.encoder_weights) in ("", "none"):
        return None
    import torch

    from nailseg.stacks.lightning.models import build_smp_model

    model = build_smp_model(exp.model)  # the offline provider (SHA-256 checked), a file, or smp's download
    torch.save(model.encoder.state_dict(), out / WEIGHTS_FILE)
    return WEIGHTS_FILE


def write_script(exp: Experiment, pairs: dict[str, list[Pair]], out: Path, config_name: str) -> list[Path]:
    """Write ``train.py``, ``split.json``, ``README.md`` (and the encoder's weights) into ``out``."""
    from nailseg.core.augment import to_albumentations
    from nailseg.core.runtime import encoder_lr_scale
    from nailseg.stacks.lightning.hardware import torch_precision

    problems = refusals(exp)
    if problems:
        raise ConfigError(problems)
    norm, o, t = exp.normalization, exp.optim, exp.trainer
    train = to_albumentations(exp.augment.train, exp.data.size_hw, norm=norm, crop=exp.data.crop_hw)
    evaluation = to_albumentations([], exp.data.size_hw, train=False, norm=norm)
    loss = (f"return {exp.loss.dice_weight!r} * self.dice(logits, mask) + {exp.loss.bce_weight!r} * self.bce(logits, mask)"
            if exp.loss.name == "dice_bce" else LOSS_LINES[exp.loss.name])
    weights = _encoder_weights(exp, out)
    values = dict(
        title=f"Train {config_name}: Lightning + segmentation_models_pytorch ({exp.model.arch} on {exp.model.encoder}).",
        config=config_name, image_size=repr(tuple(exp.data.size_hw)), mean=repr(tuple(norm.mean)),
        std=repr(tuple(norm.std)), norm_name=norm.name, epochs=t.max_epochs, batch_size=t.batch_size,
        seed=t.seed, num_workers=1 if exp.data.num_workers == "auto" else exp.data.num_workers,
        lr=repr(o.lr), weight_decay=repr(o.weight_decay),
        encoder_lr_scale=repr(encoder_lr_scale(o.encoder_lr_scale, exp.model.default_encoder_lr_scale)),
        warmup_epochs=o.warmup_epochs, schedule=repr(o.scheduler), poly_power=repr(o.poly_power),
        precision=repr(torch_precision(t.precision, "cpu").name), encoder_weights=repr(weights),
        train_transforms=render_compose(train), eval_transforms=render_compose(evaluation),
        arch=repr(exp.model.arch), encoder=repr(exp.model.encoder), loss_lines=" " * 8 + loss,
        optimizer_line=" " * 8 + OPTIMIZERS[o.name], gradient_clip_val=repr(t.gradient_clip_val),
        accumulate=t.accumulate_grad_batches, readers=READERS,
    )
    script = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(values)
    (out / "train.py").write_text(script, encoding="utf-8")
    write_split(pairs, out)
    (out / "README.md").write_text(README.format(config=config_name, epochs=t.max_epochs,
                                                 weights=f"- `{WEIGHTS_FILE}`: the encoder's starting weights "
                                                 f"({exp.model.encoder_weights}), as nailseg loaded them\n"
                                                 if weights else ""), encoding="utf-8")
    return sorted(out.iterdir())


README = """# {config}, as a plain Lightning script

Written by `nailseg eject`. Nothing here imports nailseg.

```console
pip install torch lightning segmentation-models-pytorch albumentations pillow opencv-python-headless
python train.py                 # {epochs} epochs; OUT/metrics.json holds the val (and test) IoU and Dice
python train.py --epochs 3 --out runs/quick
```

- `train.py`: the data (a `Dataset` + `LightningDataModule`, albumentations), the model (`smp.create_model`),
  its loss, optimiser and schedule (a `LightningModule`), `Trainer.fit`, and the evaluation at each photo's size
- `split.json`: the image and mask files of the train, val and test parts, as `nailseg train` splits them
{weights}"""
