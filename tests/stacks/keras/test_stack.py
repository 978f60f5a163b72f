"""The Keras backend end to end through the real CLI (subprocesses: TensorFlow stays out of pytest)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, run_cli, scratch
from tests.contract import StackContract

CONFIG = str(REPO / "configs" / "keras-cpu.yaml")
TINY = ["data.image_size=64", "trainer.batch_size=4", "logging.predictions=2"]


@pytest.fixture(scope="module")
def keras_run(synth_data, tmp_path_factory):
    pytest.importorskip("segmentation_models")
    with scratch(tmp_path_factory, "kruns") as runs:
        # trained on 32 px windows (data.crop_size) of the 64 px pictures, validated, exported and served whole
        # with the encoder on its own optimiser at half the rate, inside a time budget that fits both epochs
        proc = run_cli("train", CONFIG, f"data.root={synth_data}", f"run.dir={runs}", "run.name=k",
                       "trainer.max_epochs=2", "optim.warmup_epochs=2", "optim.lr=0.003", *TINY, "data.crop_size=32",
                       "optim.encoder_lr_scale=0.5", "trainer.max_time=30m")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert Path(proc.stdout.strip().splitlines()[-1]) == runs / "k"
        yield runs / "k"


def test_run_folder_matches_lightning_keys(keras_run):
    assert {p.name for p in keras_run.iterdir()} >= {"config.yaml", "split.json", "checkpoints", "metrics.jsonl",
                                                     "summary.json", "tb", "predictions"}
    assert list((keras_run / "tb").rglob("events.out.tfevents.*"))
    records = [json.loads(x) for x in (keras_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    # optim.warmup_epochs=2 means on Keras what it means on Lightning (tests/stacks/lightning)
    assert [r["lr"] for r in records] == pytest.approx([0.001, 0.002])
    for key in ("train_loss", "val_loss", "val_iou", "val_dice", "images_per_s", "epoch_time_s", "lr", "step"):
        assert all(r[key] is not None for r in records), key
    summary = json.loads((keras_run / "summary.json").read_text())
    assert summary["stack"] == "keras" and "backend" not in summary and summary["precision"] == "float32"
    assert summary["budget"]["planned_epochs"] == 2 and len(summary["budget"]["epoch_times_s"]) == 2
    assert json.loads((keras_run / "budget.json").read_text())["planned_epochs"] == 2
    assert (keras_run / "checkpoints" / "best.weights.h5").exists()
    # summary.json's scores are exactly the shared evaluation's: TestKerasContract


def test_eval_predict_export(keras_run, tmp_path):
    ev = run_cli("eval", str(keras_run), "--split", "test", "--quiet")
    assert ev.returncode == 0, ev.stderr[-2000:]
    result = json.loads((keras_run / "eval.json").read_text())
    assert all(r["tp"] + r["fp"] + r["fn"] + r["tn"] == 96 * 72 for r in result["per_image"])  # original size
    ex = run_cli("export", str(keras_run), "--format", "savedmodel", "--out", str(tmp_path / "sm"))
    assert ex.returncode == 0, ex.stderr[-2000:]
    assert (tmp_path / "sm" / "saved_model.pb").exists()


def test_tflite_export_is_verified_and_onnx_refused(keras_run, tmp_path):
    ex = run_cli("export", str(keras_run), "--format", "tflite", "--out", str(tmp_path / "m.tflite"))
    assert ex.returncode == 0, ex.stderr[-2000:]
    report = json.loads((tmp_path / "export.json").read_text())
    assert report["format"] == "tflite" and report["tolerance"] == {"max_abs_diff": 1e-2, "mask_agreement": 0.999}
    assert report["max_abs_diff"] <= 1e-2 and report["mask_agreement"] >= 0.999
    assert "validation images of the run" in report["verified_on"]
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "m.tflite"))
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    onnx = run_cli("export", str(keras_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert onnx.returncode != 0 and "--format onnx: no maintained TensorFlow-to-ONNX converter" in onnx.stderr
    assert sum(line.startswith("error") for line in onnx.stderr.splitlines()) == 1 and not (tmp_path / "m.onnx").exists()


def test_predict_files(keras_run, synth_data, tmp_path):
    image = sorted((synth_data / "images").iterdir())[0]
    pr = run_cli("predict", str(keras_run), str(image), "--out", str(tmp_path / "p"), "--quiet")
    assert pr.returncode == 0, pr.stderr[-2000:]
    assert (tmp_path / "p" / f"{image.stem}_mask.png").exists()


@pytest.mark.slow
def test_tf_pipeline_and_balance(synth_data, tmp_path):
    pytest.importorskip("segmentation_models")
    proc = run_cli("train", CONFIG, f"data.root={synth_data}", f"run.dir={tmp_path}", "run.name=t",
                   "trainer.max_epochs=2", "data.pipeline=tf", "data.balance={by: fg_bins, bins: 2, epoch_size: 16}",
                   *TINY, "data.crop_size=[32,64]")  # tf.image windows, whole-picture validation
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8]
    assert all(abs(sum(r["group_share"].values()) - 1) < 1e-9 for r in records)


class TestKerasContract(StackContract):
    """The shared stack contract (tests/contract.py) on the Keras stack."""

    stack = "keras"
    best_files = ("checkpoints/best.weights.h5",)

    @pytest.fixture
    def contract_run(self, keras_run):
        return keras_run

    @pytest.fixture
    def train_args(self, synth_data):
        pytest.importorskip("segmentation_models")
        return lambda runs, name, epochs: [CONFIG, f"data.root={synth_data}", f"run.dir={runs}", f"run.name={name}",
                                           f"trainer.max_epochs={epochs}", *TINY]


@pytest.mark.slow
def test_ejected_script_trains_on_windows_and_scores_whole_pictures(synth_data, tmp_path):
    """``nailseg eject`` of a Keras experiment with data.crop_size: the plain script's training batches
    are the windows (TRAIN_SIZE), its model takes any size, and it scores whole 64 px pictures."""
    pytest.importorskip("segmentation_models")
    out = tmp_path / "ejected"
    proc = run_cli("eject", CONFIG, f"data.root={synth_data}", *TINY, "data.crop_size=32", "trainer.max_epochs=1",
                   "optim.encoder_lr_scale=0.5", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = (out / "train.py").read_text()
    assert "TRAIN_SIZE = (32, 32)" in script and "IMAGE_SIZE = (64, 64)" in script and "A.RandomCrop(" in script
    assert "import nailseg" not in script and "from nailseg" not in script
    probe = ("import json, train; x, y = next(iter(train.dataset(train.SPLIT['train'], train=True))); "
             "v, _ = next(iter(train.dataset(train.SPLIT['val'], train=False))); "
             "m = train.compile_model(train.build_model(), 1, 1); "
             "print(json.dumps([list(x.shape), list(y.shape), list(v.shape), list(m.input_shape), type(m).__name__, "
             "sum(m.is_encoder), float(m.encoder_optimizer.learning_rate / m.optimizer.learning_rate)]))")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "3"}
    shapes = subprocess.run([sys.executable, "-c", probe], cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert shapes.returncode == 0, shapes.stderr[-3000:]
    train_x, train_y, val_x, model_in, kind, encoder, rate = json.loads(shapes.stdout.strip().splitlines()[-1])
    assert train_x[1:] == [32, 32, 3] and train_y[1:] == [32, 32, 1] and val_x[1:] == [64, 64, 3]
    assert model_in == [None, None, None, 3]  # one model for the windows and the whole pictures
    # optim.encoder_lr_scale: a second optimiser on resnet18's 58 trainable encoder variables, at half the rate
    assert kind == "TwoRateModel" and encoder == 58 and rate == pytest.approx(0.5)
    trained = subprocess.run([sys.executable, "train.py", "--epochs", "1", "--out", "o"], cwd=out, env=env,
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    scores = json.loads((out / "o" / "metrics.json").read_text())
    split = json.loads((out / "split.json").read_text())
    assert scores["epochs"] == 1 and scores["val"]["images"] == len(split["val"]) > 0  # scored whole, photo by photo
