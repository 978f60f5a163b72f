"""``nailseg eject`` on the MMDetection stack: a plain MMDetection folder (a whole config, the timm
backbone in MMDetection's registry, masks -> COCO with pycocotools) that imports no nailseg, whose
config is the one nailseg trains with, and that MMDetection's Runner trains."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REAL_DATA, REPO, run_cli

pytest.importorskip("mmdet")
pytest.importorskip("mmcv.ops")
pytestmark = pytest.mark.slow

RECIPE = REPO / "configs" / "maskrcnn-pretrained-cpu.yaml"
# A few iterations at a small size: the test checks the folder builds and trains, not its mAP. The
# sampler's size is not the default, so the config comparison shows the key reaches the ejected file.
# The rotation and colour ops run in MMDetection's Albu (seeded), so the folder carries augmentation.py too.
BUDGET = ["data.image_size=96", "trainer.max_epochs=2", "trainer.limit_train_batches=3", "data.num_workers=0",
          "data.split.val=0.1", "model.rois_per_image=128",
          "augment.train=[{name: hflip}, {name: affine, rotate: 25, p: 0.7}, {name: brightness_contrast}]"]


@pytest.fixture(scope="module")
def ejected(tmp_path_factory) -> Path:
    if not (REAL_DATA / "images").is_dir():
        pytest.skip(f"real nails pairs not found at {REAL_DATA}")
    out = tmp_path_factory.mktemp("eject") / "maskrcnn"
    proc = run_cli("eject", str(RECIPE), f"data.root={REAL_DATA}", *BUDGET, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_the_folder_imports_no_nailseg_and_holds_nailsegs_config(ejected: Path, monkeypatch):
    from mmengine.config import Config

    from nailseg.config import load_experiment
    from nailseg.stacks.mmdet.config import model_config

    assert sorted(p.name for p in ejected.iterdir()) == [
        "README.md", "augmentation.py", "encoder_weights.pt", "mask_rcnn.py", "split.json", "timm_backbone.py",
        "train.py"]
    assert "nailseg" not in _imports(ejected / "train.py") | _imports(ejected / "timm_backbone.py") | _imports(
        ejected / "augmentation.py")
    assert {"mmengine", "mmdet", "pycocotools"} <= _imports(ejected / "train.py")
    assigned = {t.id for n in ast.parse((ejected / "mask_rcnn.py").read_text()).body if isinstance(n, ast.Assign)
                for t in n.targets}
    assert "_base_" not in assigned and {"model", "train_dataloader", "optim_wrapper", "param_scheduler"} <= assigned
    monkeypatch.syspath_prepend(str(ejected))  # custom_imports: timm_backbone.py, as train.py does
    cfg = Config.fromfile(ejected / "mask_rcnn.py").to_dict()
    exp = load_experiment(RECIPE, [f"data.root={REAL_DATA}", *BUDGET])
    ours = model_config(exp.model.encoder, exp.model.max_instances, exp.optim.freeze_encoder_bn, exp.normalization,
                        exp.model.encoder_weights, rois_per_image=exp.model.rois_per_image)
    theirs = dict(cfg["model"])
    assert theirs.pop("backbone") == dict(type="TimmBackbone", encoder="tf_efficientnet_lite0",
                                          weights="encoder_weights.pt", norm_eval=False)
    ours.pop("backbone")
    assert json.loads(json.dumps(theirs)) == json.loads(json.dumps(ours))  # tuples and lists alike
    assert cfg["val_evaluator"]["ann_file"] == str(ejected / "coco" / "val.json")  # {{fileDirname}}, resolved
    assert cfg["train_cfg"]["max_iters"] == 2 * 3 and cfg["custom_imports"]["imports"] == ["timm_backbone", "augmentation"]
    steps = [step["type"] for step in cfg["train_dataloader"]["dataset"]["pipeline"]]
    assert steps[3:] == ["RandomFlip", "SeededAlbu", "BoxesFromMasks", "PackDetInputs"]  # after load and resize


def test_the_backbone_starts_from_nailsegs_imagenet_tensors(ejected: Path, monkeypatch):
    import torch

    from nailseg.stacks.mmdet.backbone import TimmBackbone as NailsegBackbone

    monkeypatch.syspath_prepend(str(ejected))
    from timm_backbone import TimmBackbone  # registers in MMDetection's MODELS

    theirs = TimmBackbone("tf_efficientnet_lite0", weights="encoder_weights.pt")
    theirs.init_weights()
    ours = NailsegBackbone("tu-tf_efficientnet_lite0", "imagenet")
    ours.init_weights()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(theirs.eval()(x), ours.eval()(x), strict=True):
            assert torch.equal(a, b)
    random = TimmBackbone("tf_efficientnet_lite0")  # weights none: different numbers, so the check can fail
    assert not torch.equal(random.net.state_dict()["conv_stem.weight"], theirs.net.state_dict()["conv_stem.weight"])


def test_mmdetections_runner_trains_the_folder_and_its_coco_is_nailsegs(ejected: Path, tmp_path):
    from pycocotools import mask as mask_utils

    from nailseg.core.data.coco import to_coco
    from nailseg.core.data.discover import Pair

    proc = subprocess.run([sys.executable, "train.py", "--epochs", "1", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900, cwd=ejected)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["iterations"] == 3 and metrics["epochs"] == 1
    assert "Iter(train) [3/3]" in proc.stdout + proc.stderr
    assert list((tmp_path / "out").glob("iter_3.pth"))  # MMDetection's own checkpoint
    split = json.loads((ejected / "split.json").read_text())
    coco = json.loads((ejected / "coco" / "train.json").read_text())
    root = Path(REAL_DATA / "images").resolve()
    pairs = [Pair(key=str(Path(i).relative_to(root)), image=Path(i), mask=Path(m)) for i, m in split["train"]]
    ids = {key: n for n, key in enumerate(sorted(p.key for p in pairs), start=1)}
    reference, _ = to_coco(pairs, ids, min_area=4)
    assert len(coco["annotations"]) == len(reference["annotations"]) > len(pairs)  # several nails a photo
    for a, b in zip(coco["annotations"], reference["annotations"], strict=True):
        assert a["image_id"] == b["image_id"] and a["area"] == b["area"] and a["bbox"] == b["bbox"]
        assert np.array_equal(mask_utils.decode(a["segmentation"]), mask_utils.decode(b["segmentation"]))


def test_eject_refuses_many_classes_and_leaves_nothing(class_data, tmp_path):
    out = tmp_path / "many"
    proc = run_cli("eject", str(RECIPE), f"data.root={class_data}", "data.classes=classes.txt", "--out", str(out))
    assert proc.returncode == 2 and "data.classes" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".many.*"))
