"""``nailseg eject`` for the Keras stack: the experiment as one plain tf.keras + segmentation_models +
tf.data + albumentations script (``templates/train.py.tmpl``) that imports nothing of nailseg.

The model is saved as nailseg builds it (``initial_model.keras``: sm's architecture, the float32
sigmoid head, BatchNorm momentum, and the starting weights: the offline ImageNet tensors for the
EfficientNet-Lite backbones nailseg registers in sm), so plain tf-keras loads it with no custom
object; the albumentations pipeline is nailseg's own ``Compose`` written back as code.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Template

from nailseg.config import Experiment
from nailseg.core.data.discover import Pair
from nailseg.core.eject import READERS, render_compose, write_split
from nailseg.errors import ConfigError

TEMPLATE = Path(__file__).with_name("templates") / "train.py.tmpl"
OPTIMIZERS = {  # Keras applies weight decay decoupled for all three, as the Keras stack does
    "adamw": "    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=WEIGHT_DECAY)",
    "adam": "    optimizer = keras.optimizers.Adam(learning_rate=schedule, weight_decay=WEIGHT_DECAY or None)",
    "sgd": "    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9, weight_decay=WEIGHT_DECAY or None)",
}
LOSSES = {
    "dice": "sm.losses.DiceLoss()",
    "bce": "sm.losses.BinaryCELoss()",
    "focal": "sm.losses.BinaryFocalLoss()",
    "jaccard": "sm.losses.JaccardLoss()",
}


def refusals(exp: Experiment) -> list[str]:
    lines = []
    if exp.pipeline != "albumentations":
        lines.append(f"data.pipeline={exp.pipeline}: eject writes the albumentations pipeline (through "
                     "tf.numpy_function); use data.pipeline: albumentations to eject it")
    if exp.data.balance is not None:
        lines.append("data.balance: eject writes a plain shuffled tf.data pipeline")
    if exp.data.classes is not None:
        lines.append("data.classes: eject writes the binary (sigmoid) script; many classes train with nailseg train")
    return lines


def write_script(exp: Experiment, pairs: dict[str, list[Pair]], out: Path, config_name: str) -> list[Path]:
    """Write ``train.py``, ``initial_model.keras``, ``split.json`` and ``README.md`` into ``out``."""
    from nailseg.core.augment import to_albumentations
    from nailseg.stacks.keras.models import build_sm_model
    from nailseg.stacks.keras.optim import encoder_scale
    from nailseg.stacks.keras.stack import resolve_policy

    problems = refusals(exp)
    if problems:
        raise ConfigError(problems)
    norm, o, t, m = exp.normalization, exp.optim, exp.trainer, exp.model
    crop = exp.data.crop_hw
    # offline ImageNet tensors, a file, or sm's download; any input size when training on windows
    model = build_sm_model(m, exp.data.size_hw if crop is None else (None, None))
    model.save(out / "initial_model.keras")
    # the layers the script's second optimiser steps when ENCODER_LR_SCALE is not 1 (caught when sm built the model)
    (out / "encoder_layers.json").write_text(json.dumps(model.nailseg_encoder_layers, indent=0), encoding="utf-8")
    loss = (f"{exp.loss.dice_weight!r} * sm.losses.DiceLoss() + {exp.loss.bce_weight!r} * sm.losses.BinaryCELoss()"
            if exp.loss.name == "dice_bce" else LOSSES[exp.loss.name])
    weights = str(m.encoder_weights)
    values = dict(
        title=f"Train {config_name}: tf.keras + segmentation_models ({m.arch} on {m.encoder}).",
        config=config_name, image_size=repr(tuple(exp.data.size_hw)),
        train_size="IMAGE_SIZE" if crop is None else repr(tuple(crop)),
        input_shape="(*IMAGE_SIZE, 3)" if crop is None else "(None, None, 3)", epochs=t.max_epochs, batch_size=t.batch_size,
        seed=t.seed, lr=repr(o.lr), weight_decay=repr(o.weight_decay), warmup_epochs=o.warmup_epochs,
        schedule=repr(o.scheduler), poly_power=repr(o.poly_power), policy=repr(resolve_policy(exp)),
        readers=READERS, arch=m.arch, encoder=repr(m.encoder),
        weights_note=f" ({weights}: {norm.name} input normalisation)" if weights not in ("", "none") else " (random)",
        train_transforms=render_compose(to_albumentations(exp.augment.train, exp.data.size_hw, norm=norm, crop=crop)),
        eval_transforms=render_compose(to_albumentations([], exp.data.size_hw, train=False, norm=norm)),
        optimizer_line=OPTIMIZERS[o.name], loss_line=f"    loss = {loss}",
        encoder_lr_scale=repr(encoder_scale(exp)),
    )
    (out / "train.py").write_text(Template(TEMPLATE.read_text(encoding="utf-8")).substitute(values), encoding="utf-8")
    write_split(pairs, out)
    (out / "README.md").write_text(README.format(config=config_name, epochs=t.max_epochs), encoding="utf-8")
    return sorted(out.iterdir())


README = """# {config}, as a plain tf.keras script

Written by `nailseg eject`. Nothing here imports nailseg.

```console
pip install tensorflow tf-keras segmentation-models albumentations pillow opencv-python-headless
python train.py                 # {epochs} epochs; OUT/metrics.json holds the val (and test) IoU and Dice
python train.py --epochs 3 --out runs/quick
tensorboard --logdir out/tb
```

- `train.py`: tf.data with albumentations through `tf.numpy_function`, the mixed-precision policy,
  `model.compile` / `model.fit` with the TensorBoard callback, and the evaluation at each photo's size
- `initial_model.keras`: the segmentation_models model and its starting weights, as nailseg built it
  (plain tf-keras loads it: `keras.models.load_model(..., compile=False)`)
- `split.json`: the image and mask files of the train, val and test parts, as `nailseg train` splits them
- `encoder_layers.json`: the encoder's layer names in `initial_model.keras`; with `ENCODER_LR_SCALE`
  other than 1 a second optimiser steps them at that times the learning rate
"""
