"""``model:``: one class per model family; ``config.families`` dispatches the section to them."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from nailseg.config.base import _Section


CLASSES_HELP = ("1: one logit + sigmoid; 2: softmax over background/nail; many: set from data.classes "
                "(softmax over them)")


class _ModelBase(_Section):
    default_encoder_lr_scale: ClassVar[float] = 1.0  # optim.encoder_lr_scale when it is not set
    encoder_has_batchnorm: ClassVar[bool] = True     # optim.freeze_encoder_bn has something to freeze

    def starts_pretrained(self) -> bool:
        """Whether the encoder starts from trained weights (so its BatchNorm statistics mean something)."""
        return any(str(getattr(self, key, "none")) not in ("", "none")
                   for key in ("encoder_weights", "init_from", "pretrained", "load_from"))

    def describe(self) -> dict[str, str]:
        """family / arch / encoder for tables (``nailseg compare``), whatever the family calls them."""
        return {"family": self.family, "arch": getattr(self, "arch", self.family),
                "encoder": getattr(self, "encoder", "")}

    @property
    def catalogue_encoder(self) -> str | None:
        """The encoder's name in the weights catalogue (``core/weights.py``: its provider and input
        normalisation), for the families whose encoder is one of its entries; ``None`` otherwise."""
        return None


ModelBase = _ModelBase  # what a plugin's model family subclasses (with register_family)


class SmpModel(_ModelBase):
    """segmentation_models_pytorch: any architecture with any encoder (Lightning stack)."""

    family: Literal["smp"] = "smp"
    arch: str = "Unet"
    encoder: str = "efficientnet-b4"
    encoder_weights: str = Field("none", description="none | imagenet (offline from an installed weights package "
                                                     "when one ships this encoder, see `nailseg weights list`; "
                                                     "else smp's download) | a local file (smp, timm, torchvision "
                                                     "or EfficientNet-PyTorch layout)")
    classes: int = Field(1, ge=1, le=255, description=CLASSES_HELP)
    init_from: str = Field("none", description="none | a run folder (its best weights) | a weights file: "
                                               "fine-tune from another run, e.g. one on synthetic nails")

    @property
    def catalogue_encoder(self) -> str | None:
        return self.encoder


class UpernetModel(_ModelBase):
    """transformers ``UperNetForSemanticSegmentation`` over a timm backbone (transformers' own
    ``TimmBackbone``), inside Lightning: the Hugging Face model that starts from the same offline
    ImageNet encoder as the smp recipe."""

    family: Literal["upernet"]
    default_encoder_lr_scale: ClassVar[float] = 0.5  # as the smp recipe's: the head starts random
    encoder: str = Field("tu-tf_efficientnet_lite0", description="tu-<timm model>: the backbone, named as in "
                                                                 "smp and the weights catalogue")
    encoder_weights: str = Field("none", description="none | imagenet (offline from an installed weights package, "
                                                     "see `nailseg weights list`; else timm's download) | a local file")
    hidden_size: int = Field(128, ge=16, le=1024, description="UperNet's channel width (transformers' default "
                                                              "512 is sized for GPUs)")
    classes: int = Field(1, ge=1, le=255, description=CLASSES_HELP)
    init_from: str = Field("none", description="none | a run folder | a weights file (see smp)")

    @field_validator("encoder")
    @classmethod
    def _timm_name(cls, v: str) -> str:
        if not v.startswith("tu-"):
            raise ValueError(f"{v!r}: a timm backbone, named tu-<timm model> (e.g. tu-tf_efficientnet_lite0)")
        return v

    @property
    def catalogue_encoder(self) -> str | None:
        return self.encoder

    def describe(self) -> dict[str, str]:
        return {"family": "upernet", "arch": "UperNet", "encoder": self.encoder}


class SegformerModel(_ModelBase):
    """transformers SegFormer inside Lightning."""

    family: Literal["segformer"]
    default_encoder_lr_scale: ClassVar[float] = 0.1  # its encoder is the pretrained-style half
    encoder_has_batchnorm: ClassVar[bool] = False    # Mix Transformer blocks use LayerNorm
    variant: Literal["b0", "b1", "b2", "b3", "b4", "b5"] = "b0"
    pretrained: str = Field("none", description="none | hub id | local folder (save_pretrained)")
    classes: int = Field(1, ge=1, le=255, description=CLASSES_HELP)
    init_from: str = Field("none", description="none | a run folder | a weights file (see smp)")

    def describe(self) -> dict[str, str]:
        return {"family": "segformer", "arch": "SegFormer", "encoder": f"mit-{self.variant}"}


class SmModel(_ModelBase):
    """segmentation_models on tf.keras (Keras stack)."""

    family: Literal["sm"]
    arch: str = "Unet"
    encoder: str = Field("efficientnetb4", description="sm backbone, e.g. resnet18, efficientnetb4, or "
                         "efficientnet-lite0/1/2 (ImageNet weights offline with nailseg[weights])")
    encoder_weights: str = Field("none", description="none | imagenet (offline for efficientnet-lite0/1/2, "
                                 "else sm's download) | path to a local .h5 file")

    @property
    def catalogue_encoder(self) -> str | None:
        from nailseg.core.weights import SM_LITE_ENCODERS

        return SM_LITE_ENCODERS.get(self.encoder)


MASKRCNN_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")  # MMDetection's own ResNet backbone


class MaskrcnnModel(_ModelBase):
    """MMDetection Mask R-CNN (instance segmentation), on MMDetection's ResNet or on a timm encoder
    (``tu-<timm model>``) registered in MMDetection's registry (``stacks/mmdet/backbone.py``)."""

    family: Literal["maskrcnn"]
    encoder: str = Field("resnet50", description="resnet18/34/50/101 (MMDetection's ResNet) | tu-<timm model>, "
                                                 "e.g. tu-tf_efficientnet_lite0 (ImageNet weights offline with "
                                                 "nailseg[weights])")
    encoder_weights: str = Field("none", description="none | imagenet (tu- encoders: offline from an installed "
                                                     "weights package, see `nailseg weights list`) | a local file "
                                                     "(tu- encoders)")
    load_from: str = Field("none", description="none | a local mmdet checkpoint | a URL (needs internet)")
    min_area: int = Field(4, ge=0, description="mask regions below this many pixels are not instances")
    max_instances: int = Field(30, ge=1, le=1000, description="most instances kept per image (MMDetection's "
                               "max_per_img; its COCO default of 100 is far above the nails of a few hands, "
                               "and the mask head's work grows with it)")
    rois_per_image: int = Field(512, ge=16, le=4096, description="proposals sampled per training image for the "
                                "box and mask heads, a quarter of them positive (MMDetection's rcnn sampler num; "
                                "512 is its COCO default). On a CPU the mask head's four 256-channel convolutions "
                                "over each positive are most of a step: 128 (Detectron2's small-data tutorial "
                                "value) trains about twice as fast")
    score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="instances scoring below this are left out "
                                   "of the union mask (eval's IoU), the class map, and predict's masks, overlays "
                                   "and counts; COCO mAP ranks every instance whatever it is. 0.5: chosen on the "
                                   "pretrained recipe's held-out folds (docs/results.md); "
                                   "MMDetection draws from 0.3")
    mask_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="a pixel is in an instance where the mask "
                                  "head's probability reaches this (MMDetection's mask_thr_binary)")

    @field_validator("encoder")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        if v not in MASKRCNN_RESNETS and not (v.startswith("tu-") and len(v) > 3):
            raise ValueError(f"{v!r}: one of {', '.join(MASKRCNN_RESNETS)}, or a timm encoder as tu-<timm model> "
                             "(e.g. tu-tf_efficientnet_lite0)")
        return v

    @model_validator(mode="after")
    def _weights_for_timm_only(self):
        if self.encoder_weights not in ("", "none") and not self.encoder.startswith("tu-"):
            raise ValueError(f"model.encoder_weights={self.encoder_weights!r}: MMDetection's {self.encoder} has no "
                             "offline ImageNet weights; use a tu- encoder (e.g. tu-tf_efficientnet_lite0) or "
                             "model.load_from")
        return self

    @property
    def catalogue_encoder(self) -> str | None:
        return self.encoder if self.encoder.startswith("tu-") else None

    def describe(self) -> dict[str, str]:
        return {"family": "maskrcnn", "arch": "MaskRCNN", "encoder": self.encoder}
