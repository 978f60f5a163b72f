"""``nailseg export RUN --format onnx`` for the torch models (smp and SegFormer).

The graph takes what an app has, ``uint8`` RGB (N, H, W, 3) of any size, and returns the
foreground probability (N, H, W) at that size (class probabilities (N, H, W, C) for a many-class
run, whose class names the file's metadata carries). Everything nailseg's own ``predict`` does is inside
it: the resize to the size the model was trained at, the normalisation, the model, the
sigmoid/softmax and the resize back. So any ONNX consumer, with no nailseg and no
pre-processing of its own, gets the answer ``nailseg predict`` gives (:mod:`nailseg.deploy`).
Exported with ``torch.onnx.export`` (the dynamo exporter, the TorchScript one where dynamo
fails) and checked with ``onnx.checker``; no hand-written graph surgery.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nailseg.core.weights import IMAGENET, Normalization
from nailseg.errors import ConfigError, MissingDependencyError
from nailseg.stacks.lightning.models import foreground_probability

OPSET = 18
MULTIPLE = 32  # encoders downsample by 32


class ExportWrapper(nn.Module):
    """uint8 NHWC photo of any size in, foreground probability (N, H, W) at that size out.

    With ``size_hw`` (what ``nailseg export`` uses) the photo is resized to the model's input size,
    bilinear with half-pixel centres as OpenCV's ``INTER_LINEAR`` (which nailseg's own predictor
    uses) but in float, not rounded to ``uint8``, and the probability map is resized back to the photo. Without it the
    model runs at the photo's own size, padded to a multiple of 32 (what exports before this one did)."""

    def __init__(self, model: nn.Module, norm: Normalization = IMAGENET, size_hw: tuple[int, int] | None = None,
                 *, many_classes: bool = False):
        super().__init__()
        self.model = model
        self.size_hw = tuple(size_hw) if size_hw else None
        self.many_classes = many_classes  # class probabilities (N, H, W, C) instead of one foreground map
        self.register_buffer("mean", torch.tensor(norm.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(norm.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float()
        h, w = x.shape[-2], x.shape[-1]
        if self.size_hw is None:
            pad_h = (MULTIPLE - h % MULTIPLE) % MULTIPLE
            pad_w = (MULTIPLE - w % MULTIPLE) % MULTIPLE
            x = F.pad((x - self.mean) / self.std, (0, pad_w, 0, pad_h))
            return foreground_probability(self.model(x))[:, 0, :h, :w]
        x = F.interpolate(x, size=self.size_hw, mode="bilinear", align_corners=False, antialias=False)
        x = (x - self.mean) / self.std
        if self.many_classes:
            prob = torch.softmax(self.model(x).float(), dim=1)
            return F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False,
                                 antialias=False).permute(0, 2, 3, 1)
        prob = foreground_probability(self.model(x))[:, :1]
        return F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False, antialias=False)[:, 0]


def export_onnx(model: nn.Module, out: Path, metadata: dict, *, sample_hw: tuple[int, int],
                norm: Normalization = IMAGENET, opset: int = OPSET, many_classes: bool = False) -> str:
    """Write ``out`` (the model runs at ``sample_hw`` inside the graph); returns which exporter made
    it (``dynamo`` or ``torchscript``)."""
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("onnx", "export", "ONNX export (onnx, onnxscript)") from None
    wrapper = ExportWrapper(model.float().eval(), norm, sample_hw, many_classes=many_classes).eval()
    # a sample of another size than the model's, so the exporter cannot take the two for one
    sample = torch.randint(0, 255, (1, sample_hw[0] + 7, sample_hw[1] + 13, 3), dtype=torch.uint8)
    exporter = "dynamo"
    try:
        _export(wrapper, sample, out, dynamo=True, opset=opset)
    except Exception as err:  # noqa: BLE001 - dynamo cannot trace every model; the TorchScript path can
        warnings.warn(f"dynamo ONNX export failed ({str(err).splitlines()[0][:160]}); using the TorchScript exporter",
                      stacklevel=2)
        exporter = "torchscript"
        _export(wrapper, sample, out, dynamo=False, opset=opset)
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, str(out))
    return exporter


def _export(wrapper: nn.Module, sample: torch.Tensor, out: Path, *, dynamo: bool, opset: int) -> None:
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dynamic = torch.export.Dim.DYNAMIC
            program = torch.onnx.export(wrapper, (sample,), dynamo=True, opset_version=opset,
                                        input_names=["image"], output_names=["probability"],
                                        dynamic_shapes={"image": {0: dynamic, 1: dynamic, 2: dynamic}},
                                        optimize=True, verbose=False)
            if program is None:
                raise ConfigError("torch.onnx.export returned no program")
            program.save(str(out), external_data=False)
        else:
            torch.onnx.export(wrapper, (sample,), str(out), dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=["probability"],
                              dynamic_axes={"image": {0: "batch", 1: "height", 2: "width"},
                                            "probability": {0: "batch", 1: "height", 2: "width"}})
