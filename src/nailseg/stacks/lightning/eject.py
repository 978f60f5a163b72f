"""``nailseg eject`` for the Lightning stack: the experiment as one plain Lightning + albumentations
script (``templates/train.py.tmpl``) that imports nothing of nailseg. Its model is smp's
(``model.family: smp``) or transformers' own UperNet over a timm backbone or SegFormer
(``upernet``, ``segformer``) inside the same ``LightningModule``.

What the script holds is rendered from the same objects nailseg trains with, never retyped: the
albumentations pipeline is nailseg's own ``Compose`` (``core.augment.to_albumentations``) written
back as code from albumentations' serialisation, the split is the one ``nailseg train`` would fix,
and ImageNet weights are the encoder's tensors as nailseg loads them (saved beside the script).
"""

from __future__ import annotations

import json
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
    if exp.model.family not in MODELS:
        lines.append(f"model.family={exp.model.family}: eject writes the families {', '.join(MODELS)} on this stack")
    if exp.pipeline not in PIPELINES:
        lines.append(f"data.pipeline={exp.pipeline}: eject writes the {', '.join(PIPELINES)} pipelines; "
                     "train this experiment with one of them to eject it")
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
    """The encoder's starting tensors as nailseg loads them, saved beside the script (``None``: random,
    or SegFormer, whose weights come whole from ``model.pretrained``)."""
    if str(getattr(exp.model, "encoder_weights", "none")) in ("", "none"):
        return None
    import torch

    if exp.model.family == "upernet":
        from nailseg.stacks.lightning.upernet import build_upernet

        encoder = build_upernet(exp.model).hf.backbone._backbone  # timm's features_only network
    else:
        from nailseg.stacks.lightning.models import build_smp_model

        encoder = build_smp_model(exp.model).encoder  # the offline provider (SHA-256 checked), a file, or a download
    torch.save(encoder.state_dict(), out / WEIGHTS_FILE)
    return WEIGHTS_FILE


def _smp_model(exp: Experiment) -> dict[str, str]:
    m = exp.model
    arch, encoder = json.dumps(m.arch), json.dumps(m.encoder)
    return dict(
        model_library="segmentation_models_pytorch", model_imports="",
        model_lines=f"""        self.model = smp.create_model({arch}, encoder_name={encoder}, encoder_weights=None,
                                      in_channels=3, classes=1)
        if ENCODER_WEIGHTS:  # ImageNet weights, as nailseg loaded them (no download)
            self.model.encoder.load_state_dict(torch.load(HERE / ENCODER_WEIGHTS, weights_only=True))""",
        forward_lines="        return self.model(image)", encoder_module="self.model.encoder",
        save_lines='    torch.save(model.model.state_dict(), out / "model.pt")',
        title=f"Lightning + segmentation_models_pytorch ({m.arch} on {m.encoder})")


def _upernet_model(exp: Experiment) -> dict[str, str]:
    from nailseg.stacks.lightning.upernet import OUT_INDICES

    m = exp.model
    return dict(
        model_library="transformers",
        model_imports="from transformers import TimmBackboneConfig, UperNetConfig, UperNetForSemanticSegmentation\n",
        model_lines=f"""        # transformers' own classes; use_pretrained_backbone=False: nothing is downloaded
        backbone = TimmBackboneConfig(backbone={json.dumps(m.encoder[3:])}, out_indices={OUT_INDICES!r},
                                      use_pretrained_backbone=False)
        config = UperNetConfig(backbone_config=backbone, hidden_size={m.hidden_size}, use_auxiliary_head=False,
                               num_labels=1, id2label={{0: "nail"}}, label2id={{"nail": 0}})
        self.model = UperNetForSemanticSegmentation(config)
        if ENCODER_WEIGHTS:  # ImageNet weights into timm's features_only network, as nailseg loaded them
            self.model.backbone._backbone.load_state_dict(torch.load(HERE / ENCODER_WEIGHTS, weights_only=True))""",
        forward_lines="        return self.model(pixel_values=image).logits  # UperNet upsamples to the input's size",
        encoder_module="self.model.backbone", save_lines=HF_SAVE,
        title=f"Lightning + transformers (UperNet on timm's {m.encoder[3:]})")


def _segformer_model(exp: Experiment) -> dict[str, str]:
    from nailseg.stacks.lightning.segformer import VARIANTS

    m = exp.model
    if m.pretrained in ("", "none"):
        sizes = ", ".join(f"{k}={v!r}" for k, v in VARIANTS[m.variant].items())
        build = f"""        config = SegformerConfig({sizes},
                                 num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1],
                                 num_labels=1, id2label={{0: "nail"}}, label2id={{"nail": 0}})
        self.model = SegformerForSemanticSegmentation(config)  # mit-{m.variant}'s sizes, random weights"""
    else:
        source = str(Path(m.pretrained).expanduser().resolve()) if Path(m.pretrained).expanduser().is_dir() else m.pretrained
        build = f"""        # a new one-logit head over the pretrained encoder (a hub id needs the hub or its local cache)
        self.model = SegformerForSemanticSegmentation.from_pretrained(
            {json.dumps(source)}, num_labels=1, id2label={{0: "nail"}}, label2id={{"nail": 0}}, ignore_mismatched_sizes=True)"""
    return dict(
        model_library="transformers",
        model_imports="from transformers import SegformerConfig, SegformerForSemanticSegmentation\n",
        model_lines=build,
        forward_lines="""        logits = self.model(pixel_values=image).logits  # at 1/4 of the input
        return nn.functional.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)""",
        encoder_module="self.model.segformer", save_lines=HF_SAVE,
        title=f"Lightning + transformers (SegFormer mit-{m.variant})")


TORCH_TRAIN_LOADER = (
    '        return DataLoader(PairDataset(SPLIT["train"], {transform}), batch_size=self.batch_size, shuffle=True,\n'
    "                          num_workers=NUM_WORKERS, drop_last=drop_last, persistent_workers=NUM_WORKERS > 0)")
TORCH_VAL_LOADER = (
    '        return DataLoader(PairDataset(SPLIT["val"] or SPLIT["train"], {transform}), batch_size=self.batch_size,\n'
    "                          num_workers=NUM_WORKERS, persistent_workers=NUM_WORKERS > 0)")
DALI_FILE = "dali_pipeline.py"


def _albumentations_pipeline(exp: Experiment) -> dict[str, str]:
    """The DataLoader workers augment (``data.pipeline: albumentations``)."""
    return dict(augment_imports="", data_imports="DataLoader, Dataset", loader_transform="",
                train_loader=TORCH_TRAIN_LOADER.format(transform="TRAIN_AUGMENT"),
                val_loader=TORCH_VAL_LOADER.format(transform="EVAL_TRANSFORM"), augment_lines="", batch_hook="")


KORNIA_HOOK = '''    @torch.no_grad()
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """kornia where the batch now is (the GPU, when there is one): augment training batches, then
        normalise every batch with the encoder's mean and std."""
        image, mask = batch["image"].float() / 255.0, batch["mask"].float()
        if self.trainer.training and self.augment is not None:
            image, mask = self.augment(image, mask)
            image, mask = image.clamp(0.0, 1.0), (mask > 0.5).float()
        return {"image": (image - self.mean) / self.std, "mask": mask}

'''


def _kornia_pipeline(exp: Experiment) -> dict[str, str]:
    """The workers only resize; kornia augments and normalises the batch on its device
    (``data.pipeline: kornia``), with the steps nailseg builds (``loaders/kornia.kornia_steps``)."""
    from nailseg.core.augment import to_albumentations
    from nailseg.core.eject import render_value
    from nailseg.stacks.lightning.loaders.kornia import kornia_steps

    steps = kornia_steps(exp.augment.train, exp.data.size_hw, exp.data.crop_hw)
    calls = "".join(f"            K.{name}({', '.join(f'{k}={render_value(k, v)}' for k, v in kwargs.items())}),\n"
                    for name, kwargs in steps)
    resize = render_compose(to_albumentations([], exp.data.size_hw, train=False, normalize=False))
    sequential = (f"K.AugmentationSequential(\n{calls}            data_keys=[\"input\", \"mask\"],\n        )"
                  if steps else "None")
    return dict(
        augment_imports="import kornia.augmentation as K\n", data_imports="DataLoader, Dataset",
        loader_transform=("\n# data.pipeline kornia: the loaders only resize and hand over uint8; the LightningModule "
                          "augments and\n# normalises on the batch's device (on_after_batch_transfer)\n"
                          f"LOADER_TRANSFORM = A.Compose([\n{resize}\n])\n"),
        train_loader=TORCH_TRAIN_LOADER.format(transform="LOADER_TRANSFORM"),
        val_loader=TORCH_VAL_LOADER.format(transform="LOADER_TRANSFORM"),
        augment_lines=("        # one sequential for image and mask: every geometric draw is shared (the mask: nearest)\n"
                       f"        self.augment = {sequential}\n"
                       "        self.register_buffer(\"mean\", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)\n"
                       "        self.register_buffer(\"std\", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)\n"),
        batch_hook=KORNIA_HOOK)


def _dali_pipeline(exp: Experiment) -> dict[str, str]:
    """DALI reads, decodes and augments (``data.pipeline: dali``): ``dali_pipeline.py``, the very
    file nailseg's DALI loader runs, is copied beside the script; the spec's ops are written as plain
    objects with the spec's attributes."""
    from nailseg.core.eject import render_value

    def fields(op) -> dict:
        dumped = op.model_dump()
        return {"name": dumped.pop("name"), **dumped}

    ops = ",\n".join("    SimpleNamespace(" + ", ".join(f"{k}={render_value(k, v)}" for k, v in fields(op).items())
                     + ")" for op in exp.augment.train)
    crop = repr(tuple(exp.data.crop_hw)) if exp.data.crop_hw is not None else "None"
    return dict(
        augment_imports="import sys\nfrom types import SimpleNamespace\n\n", data_imports="Dataset",
        loader_transform=f"""
# data.pipeline dali: DALI reads, decodes and augments, on the GPU when there is one (dali_pipeline.py,
# beside this file); the albumentations EVAL_TRANSFORM above only serves evaluate() at each photo's size
sys.path.insert(0, str(HERE))
from dali_pipeline import DaliLoader  # noqa: E402

OPS = [  # the augmentation spec: each op's name and arguments, as dali_pipeline.py reads them
{ops}{"," if ops else ""}
]
CROP = {crop}  # training windows cut after the resize (None: whole pictures)
""",
        train_loader="""        files = [pair[0] for pair in SPLIT["train"]], [pair[1] for pair in SPLIT["train"]]
        return DaliLoader(*files, OPS, IMAGE_SIZE, batch_size=self.batch_size, train=True, seed=SEED,
                          drop_last=drop_last, mean=MEAN, std=STD, crop=CROP)""",
        val_loader="""        pairs = SPLIT["val"] or SPLIT["train"]
        return DaliLoader([p[0] for p in pairs], [p[1] for p in pairs], [], IMAGE_SIZE, batch_size=self.batch_size,
                          train=False, seed=SEED, drop_last=False, mean=MEAN, std=STD)""",
        augment_lines="", batch_hook="")


PIPELINES = {"albumentations": _albumentations_pipeline, "kornia": _kornia_pipeline, "dali": _dali_pipeline}


HF_SAVE = '''    torch.save(model.model.state_dict(), out / "model.pt")
    model.model.save_pretrained(out / "hf_model")  # loads in plain transformers: from_pretrained(out / "hf_model")'''
MODELS = {"smp": _smp_model, "upernet": _upernet_model, "segformer": _segformer_model}


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
        config=config_name, image_size=repr(tuple(exp.data.size_hw)), mean=repr(tuple(norm.mean)),
        std=repr(tuple(norm.std)), norm_name=norm.name, epochs=t.max_epochs, batch_size=t.batch_size,
        seed=t.seed, num_workers=1 if exp.data.num_workers == "auto" else exp.data.num_workers,
        lr=repr(o.lr), weight_decay=repr(o.weight_decay),
        encoder_lr_scale=repr(encoder_lr_scale(o.encoder_lr_scale, exp.model.default_encoder_lr_scale)),
        warmup_epochs=o.warmup_epochs, schedule=repr(o.scheduler), poly_power=repr(o.poly_power),
        precision=repr(torch_precision(t.precision, "cpu").name), encoder_weights=repr(weights),
        train_transforms=render_compose(train), eval_transforms=render_compose(evaluation), loss_lines=" " * 8 + loss,
        optimizer_line=" " * 8 + OPTIMIZERS[o.name], gradient_clip_val=repr(t.gradient_clip_val),
        accumulate=t.accumulate_grad_batches, readers=READERS,
    )
    model = MODELS[exp.model.family](exp)
    values.update(model, title=f"Train {config_name}: {model['title']}.")
    values.update(PIPELINES[exp.pipeline](exp))
    script = Template(TEMPLATE.read_text(encoding="utf-8")).substitute(values)
    (out / "train.py").write_text(script, encoding="utf-8")
    write_split(pairs, out)
    if exp.pipeline == "dali":
        import shutil

        shutil.copy(Path(__file__).with_name("templates") / DALI_FILE, out / DALI_FILE)
    hf = exp.model.family != "smp"
    (out / "README.md").write_text(README.format(config=config_name, epochs=t.max_epochs,
                                                 extra_pip=" transformers timm" if hf else "",
                                                 model=model["title"].split("(")[-1].rstrip(")"),
                                                 hf_out="; OUT/hf_model is its `save_pretrained` folder" if hf else "",
                                                 weights=f"- `{WEIGHTS_FILE}`: the encoder's starting weights "
                                                 f"({exp.model.encoder_weights}), as nailseg loaded them\n"
                                                 if weights else ""), encoding="utf-8")
    return sorted(out.iterdir())


README = """# {config}, as a plain Lightning script

Written by `nailseg eject`. Nothing here imports nailseg.

```console
pip install torch lightning segmentation-models-pytorch albumentations pillow opencv-python-headless{extra_pip}
python train.py                 # {epochs} epochs; OUT/metrics.json holds the val (and test) IoU and Dice{hf_out}
python train.py --epochs 3 --out runs/quick
```

- `train.py`: the data (a `Dataset` + `LightningDataModule`, albumentations), the model ({model}),
  its loss, optimiser and schedule (a `LightningModule`), `Trainer.fit`, and the evaluation at each photo's size
- `split.json`: the image and mask files of the train, val and test parts, as `nailseg train` splits them
{weights}"""
