"""UperNet from Hugging Face transformers over a timm backbone, as a plain ``nn.Module`` for the
Lightning stack.

transformers builds the model from its own classes: ``UperNetConfig`` with a ``TimmBackboneConfig``
(``use_pretrained_backbone=False``, so nothing is downloaded), then ``UperNetForSemanticSegmentation``.
The backbone is timm's ``features_only`` network, the same one smp's ``tu-`` encoders wrap, so the
offline ImageNet weights of the catalogue (``core/weights.py``) load into it exactly as they load
into the smp recipe's encoder: the two stacks start from the same numbers. ``save_pretrained``
writes a folder that plain ``transformers`` (with timm) loads, weights included.
"""

from __future__ import annotations

from pathlib import Path

from nailseg.config import UpernetModel
from nailseg.errors import ConfigError
from nailseg.stacks.lightning.segformer import HfSegmenter

# timm's feature levels at strides 4, 8, 16 and 32: UperNet's FPN inputs (its PSP module sits on the last)
OUT_INDICES = (1, 2, 3, 4)


def _labels(classes: int) -> tuple[dict[int, str], dict[str, int]]:
    """One label per output channel (transformers sizes the head by ``len(id2label)``); the data's
    class names replace ``class_i`` in the ``hf`` export."""
    from nailseg.stacks.lightning.segformer import LABELS

    id2label = {0: "nail"} if classes == 1 else {i: LABELS.get(i, f"class_{i}") for i in range(classes)}
    return id2label, {v: k for k, v in id2label.items()}


def upernet_config(cfg: UpernetModel):
    """transformers' own config: UperNet's head over ``TimmBackboneConfig(cfg.encoder[3:])``, built
    with random backbone weights (nailseg loads the chosen ones itself, so nothing is downloaded
    behind its back and ``from_pretrained`` of a saved folder needs no network)."""
    from transformers import TimmBackboneConfig, UperNetConfig

    backbone = TimmBackboneConfig(backbone=cfg.encoder[3:], out_indices=OUT_INDICES, use_pretrained_backbone=False)
    id2label, label2id = _labels(cfg.classes)
    return UperNetConfig(backbone_config=backbone, hidden_size=cfg.hidden_size, use_auxiliary_head=False,
                         num_labels=cfg.classes, id2label=id2label, label2id=label2id)


def build_upernet(cfg: UpernetModel) -> HfSegmenter:
    """The model, its backbone's weights from ``model.encoder_weights`` (see the smp encoders: an
    installed package offline, a local file, or timm's download when online); ``nailseg_weights``
    records where they came from."""
    from transformers import UperNetForSemanticSegmentation

    from nailseg.core.weights import provider_for, sha256_of
    from nailseg.stacks.lightning.models import encoder_weights_source
    from nailseg.stacks._torch.weights import load_encoder_state, load_provider_weights, read_state

    source = encoder_weights_source(cfg)
    hf = UperNetForSemanticSegmentation(upernet_config(cfg))
    backbone = hf.backbone._backbone  # timm's features_only network
    record: dict = {"source": source.kind, "value": source.value}
    if source.kind == "hub":  # timm's own pretrained download (online), into the same network
        import timm

        try:
            downloaded = timm.create_model(cfg.encoder[3:], pretrained=True, features_only=True,
                                           out_indices=OUT_INDICES)
        except (RuntimeError, OSError, ValueError) as err:
            raise ConfigError(f"model.encoder_weights={cfg.encoder_weights!r}: timm could not fetch "
                              f"{cfg.encoder[3:]}'s weights ({str(err)[:160]})") from None
        backbone.load_state_dict(downloaded.state_dict())
    elif source.kind == "provider":
        record = load_provider_weights(backbone, provider_for(cfg.encoder))
    elif source.kind == "file":
        load_encoder_state(backbone, read_state(Path(source.value), "model.encoder_weights"), source.value)
        record = {"source": "file", "file": source.value, "sha256": sha256_of(Path(source.value))}
    model = HfSegmenter(hf, "backbone")  # logits at the input's size; the timm backbone is the encoder
    model.nailseg_weights = record
    return model
