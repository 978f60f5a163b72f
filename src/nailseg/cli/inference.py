"""What the verbs that run a trained model share: a model file or a run folder, and the
inference flags (threshold, TTA, small-region removal) on top of the run's stored options."""

from __future__ import annotations

from nailseg.deploy import is_onnx  # noqa: F401  (predict and eval import it from here)


def inference_options(args, base, model_hw: tuple[int, int]):
    """The run's (or model's) stored inference options with this command's flags on top;
    ``--tile`` becomes a window in photo pixels, in the aspect ratio of the model's input
    (``model_hw``) when given as one number."""
    from nailseg.core.postprocess import with_overrides
    from nailseg.core.tiling import window_shape

    check_tile_flags(args)
    tile = getattr(args, "tile", None)
    return with_overrides(base, threshold=args.threshold, tta=args.tta, min_area=args.min_area,
                          tile=None if tile is None else window_shape(tile, tuple(model_hw)),
                          overlap=getattr(args, "overlap", None))


def with_score_threshold(args, exp, instances: bool):
    """The run's experiment with ``--score-threshold`` as its ``model.score_threshold`` (instance runs
    only). An instance run's union mask has no pixel probabilities, so ``--threshold`` and
    ``--choose-threshold`` would change nothing there: each is one line, before any model loads."""
    from nailseg.errors import ConfigError

    value = getattr(args, "score_threshold", None)
    if not instances:
        if value is not None:
            raise ConfigError("--score-threshold: only for instance runs (Mask R-CNN); a semantic run's "
                              "cut is --threshold")
        return exp
    if args.threshold is not None or getattr(args, "choose_threshold", False):
        flag = "--threshold" if args.threshold is not None else "--choose-threshold"
        raise ConfigError(f"{flag}: an instance run's masks are cut by the instances' scores, not by pixel "
                          "probabilities; use --score-threshold (default: the run's model.score_threshold, "
                          f"{exp.model.score_threshold})")
    if value is None:
        return exp
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"--score-threshold {value}: a score between 0 and 1")
    return exp.model_copy(update={"model": exp.model.model_copy(update={"score_threshold": value})})


def check_tile_flags(args) -> None:
    """``--overlap`` without ``--tile``, or out of range: one line, before any model is loaded."""
    from nailseg.core.tiling import check_overlap
    from nailseg.errors import ConfigError

    overlap = getattr(args, "overlap", None)
    if overlap is not None:
        if getattr(args, "tile", None) is None:
            raise ConfigError("--overlap: only with --tile (it is the share of a window its neighbour covers)")
        check_overlap(overlap)


def add_inference_flags(parser, *, choose: bool = False) -> None:
    parser.add_argument("--tta", choices=["none", "hflip"], help="test-time augmentation: hflip averages the "
                        "prediction with that of the mirrored image (default: the run's, else none)")
    parser.add_argument("--threshold", type=float, help="foreground probability threshold (default: the run's "
                        "stored one, else 0.5)")
    parser.add_argument("--score-threshold", type=float, metavar="S",
                        help="instance runs (Mask R-CNN): keep the instances scoring at least S in the union "
                             "mask, class map, overlays and counts (default: the run's model.score_threshold)")
    parser.add_argument("--min-area", type=float, metavar="SHARE", help="remove predicted regions smaller than "
                        "this share of the image, e.g. 0.0005 (default: the run's, else 0 = keep all)")
    parser.add_argument("--tile", type=tile_size, nargs="?", const="model", metavar="SIZE|HxW",
                        help="sliding-window inference for photos much larger than the training images: windows "
                             "of SIZE photo pixels on their longer side (in the model input's aspect ratio; or HxW), "
                             "each predicted as a whole training photo would be, blended where they overlap; "
                             "--tile alone: windows of the model's input size, the photo's pixels 1:1. Memory is "
                             "bounded by a strip of windows, not the photo (default: off, the whole photo is "
                             "resized to the training size)")
    parser.add_argument("--overlap", type=float, metavar="F",
                        help="with --tile: the share of a window its neighbour also covers, 0 to 0.9 (default 0.25)")
    if choose:
        parser.add_argument("--choose-threshold", action="store_true",
                            help="pick the threshold with the best IoU on these images and store it (with "
                                 "--tta/--min-area) in RUN/inference.json, which eval and predict then use")


def tile_size(text: str):
    """argparse type for ``--tile``: a bad value is argparse's one-line usage error (exit 2)."""
    import argparse

    from nailseg.core.tiling import parse_tile
    from nailseg.errors import ConfigError

    try:
        return parse_tile(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix(f"--tile {text!r}: ")) from None
