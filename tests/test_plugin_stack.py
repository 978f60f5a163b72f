"""A stack is one module plus one spec: the numpy test stack (tests/stacks/numpy_stack.py) plugs in
through ``NAILSEG_STACKS`` and goes through train, eval, predict, export, compare --folds 2 and a
killed-then-resumed training, with no line about it anywhere in src/. It also keeps the contract
every real stack keeps (tests/contract.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, run_cli, scratch, write_image
from tests.contract import StackContract

ENV = {"NAILSEG_STACKS": "tests.stacks.numpy_stack", "PYTHONPATH": str(REPO), "NUMPY_STACK_EPOCH_SLEEP": "0.3"}
QUICK = {**ENV, "NUMPY_STACK_EPOCH_SLEEP": "0"}
TRAIN = ["data.image_size=64", "logging.predictions=2", "optim.warmup_epochs=0", "trainer.max_epochs=8"]
CONFIG = "model: {family: pixel}\naugment: {train: [{name: hflip}]}\n"


@pytest.fixture(scope="module")
def pixel_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "pixel.yaml"
    path.write_text(CONFIG)
    return path


def numpy_cli(*args: str, env=QUICK, timeout: float = 600):
    return run_cli(*args, env=env, fresh=True, timeout=timeout)


def train_args(runs: Path, name: str, epochs: int, data: Path, config: Path) -> list[str]:
    return [str(config), *TRAIN, f"data.root={data}", f"run.dir={runs}", f"run.name={name}", f"trainer.max_epochs={epochs}"]


@pytest.fixture(scope="module")
def numpy_run(colour_data, pixel_config, tmp_path_factory) -> Iterator[Path]:
    with scratch(tmp_path_factory, "nruns") as runs:
        proc = numpy_cli("train", *train_args(runs, "px", 8, colour_data, pixel_config))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert Path(proc.stdout.strip().splitlines()[-1]) == runs / "px"  # the last line is the run folder
        yield runs / "px"


class TestNumpyStackContract(StackContract):
    stack = "numpy"
    env = ENV
    fresh = True
    export = ("npz", False)

    @pytest.fixture
    def contract_run(self, numpy_run):
        return numpy_run

    @pytest.fixture
    def train_args(self, colour_data, pixel_config):
        return lambda runs, name, epochs: train_args(runs, name, epochs, colour_data, pixel_config)

    def cli(self, *args, **kwargs):
        return run_cli(*args, env=QUICK, fresh=True, **kwargs)


def test_a_colour_rule_learns_colour_coded_nails(numpy_run):
    """A floor a broken fit cannot reach: the empty mask scores 0 and an all-nail mask about 0.1."""
    summary = json.loads((numpy_run / "summary.json").read_text())
    assert summary["stack"] == "numpy" and summary["family"] == "pixel" and summary["pipeline"] == "albumentations"
    assert summary["val_iou"] > 0.9


def test_eval_and_predict_go_through_the_plugin(numpy_run, colour_data, tmp_path):
    proc = numpy_cli("eval", str(numpy_run), "--split", "test", "--out", str(tmp_path / "e.json"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["iou"] > 0.9 and all(r["tp"] + r["fp"] + r["fn"] + r["tn"] == 96 * 72 for r in result["per_image"])
    photo = write_image(tmp_path / "in" / "wide.png", np.full((50, 130, 3), 200, np.uint8))
    proc = numpy_cli("predict", str(numpy_run), str(photo), "--out", str(tmp_path / "p"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    from PIL import Image

    assert Image.open(tmp_path / "p" / "wide_mask.png").size == (130, 50)


def test_compare_two_folds(colour_data, pixel_config, tmp_path):
    proc = numpy_cli("compare", str(pixel_config), *TRAIN, f"data.root={colour_data}", "--folds", "2",
                     "--out", str(tmp_path / "cv"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads((tmp_path / "cv" / "compare.json").read_text())
    assert row["stack"] == "numpy" and row["folds"] == 2 and row["checkpoint"] == "last"
    assert row["n_images"] == 12  # per held-out fold
    assert len(row["fold_ious"]) == 2 and min(row["fold_ious"]) > 0.9 and not row["fold_errors"]


def test_without_the_plugin_the_family_is_refused_in_one_line(pixel_config, tmp_path):
    proc = run_cli("train", str(pixel_config), f"data.root={tmp_path}", fresh=True)
    assert proc.returncode == 2 and "model.family: must be one of smp, upernet, segformer, sm, maskrcnn" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_plugin_that_cannot_be_imported_is_one_line(pixel_config, tmp_path):
    proc = run_cli("train", str(pixel_config), f"data.root={tmp_path}", fresh=True,
                   env={"NAILSEG_STACKS": "no_such_plugin_module"})
    assert proc.returncode == 2 and "NAILSEG_STACKS=no_such_plugin_module: cannot import the stack plugin" in proc.stderr
    assert "Traceback" not in proc.stderr
