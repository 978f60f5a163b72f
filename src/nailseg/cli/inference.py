"""What the verbs that run a trained model share: a model file or a run folder, and the
inference flags (threshold, TTA, small-region removal) on top of the run's stored options."""

from __future__ import annotations


def is_onnx(target: str) -> bool:
    """A model file exported with ``--format onnx`` rather than a run folder."""
    return str(target).lower().endswith(".onnx")


def inference_options(args, base):
    """The run's (or model's) stored inference options with this command's flags on top."""
    from nailseg.core.postprocess import with_overrides

    return with_overrides(base, threshold=args.threshold, tta=args.tta, min_area=args.min_area)


def add_inference_flags(parser, *, choose: bool = False) -> None:
    parser.add_argument("--tta", choices=["none", "hflip"], help="test-time augmentation: hflip averages the "
                        "prediction with that of the mirrored image (default: the run's, else none)")
    parser.add_argument("--threshold", type=float, help="foreground probability threshold (default: the run's "
                        "stored one, else 0.5)")
    parser.add_argument("--min-area", type=float, metavar="SHARE", help="remove predicted regions smaller than "
                        "this share of the image, e.g. 0.0005 (default: the run's, else 0 = keep all)")
    if choose:
        parser.add_argument("--choose-threshold", action="store_true",
                            help="pick the threshold with the best IoU on these images and store it (with "
                                 "--tta/--min-area) in RUN/inference.json, which eval and predict then use")
