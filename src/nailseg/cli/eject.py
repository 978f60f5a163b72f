"""``nailseg eject``: an experiment as the plain script of its stack's framework, to keep."""

from __future__ import annotations

from pathlib import Path

from nailseg.cli.common import add_experiment_arguments


def cmd_eject(args) -> int:
    from nailseg.config import load_experiment
    from nailseg.engine import eject_experiment

    exp = load_experiment(args.config, args.overrides)
    files = eject_experiment(exp, Path(args.out), Path(args.config).name)
    for f in files:
        print(f)
    print(f"train with: python {Path(args.out) / 'train.py'}")
    return 0


DESCRIPTION = """\
Write the experiment as plain code of its stack's own framework, importing only that framework's
libraries, never nailseg. model.family smp, upernet or segformer: Lightning + albumentations (a
LightningDataModule, a LightningModule holding smp's or transformers' own model, with data.pipeline
kornia an AugmentationSequential in on_after_batch_transfer, with dali a DALI pipeline_def in
dali_pipeline.py beside it; Trainer.fit). sm: tf.keras + segmentation_models + tf.data
(albumentations through tf.numpy_function, the mixed-precision policy, compile/fit, TensorBoard).
maskrcnn: a whole MMDetection config (mask_rcnn.py, no _base_), the timm backbone registered in
MMDetection's registry, and a train.py that writes COCO instances with pycocotools and trains with
Runner.from_cfg. OUT/train.py trains on the split `nailseg train` would use (OUT/split.json) with the
same augmentation, model, loss, optimiser and schedule; OUT/README.md says how to run it. The data and
config are checked first; OUT must be new or empty (nothing is overwritten).
Example: nailseg eject configs/nails-pretrained-cpu.yaml data.root=DATA --out my-trainer
"""


def add_parser(sub) -> None:
    ej = sub.add_parser(
        "eject", help="write an experiment as a plain framework script (no nailseg import) to keep",
        description=DESCRIPTION)
    add_experiment_arguments(ej)
    ej.add_argument("--out", required=True,
                    help="new or empty folder for train.py, split.json, README.md (and mask_rcnn.py for Mask R-CNN)")
    ej.set_defaults(func=cmd_eject)
