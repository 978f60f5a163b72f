"""The contract every stack keeps, written once and run against each (in the style of smp's base
test classes): a subclass per stack in its own test module sets the class attributes and gives
the ``contract_run`` fixture (a finished tiny run folder) and ``train_args`` (a function that
returns the CLI arguments of a fresh run of N epochs). Everything goes through the real CLI.

What a stack must do, whatever its framework:
- the run folder has the shared files;
- ``metrics.jsonl`` is one :class:`nailseg.contract.EpochRecord` per epoch, epochs 0..n-1 once each;
- ``summary.json`` has the shared keys, and its validation scores are exactly ``nailseg eval``'s;
- without its best checkpoint, a run is scored from its last one (best -> last fallback);
- a killed training resumes without losing or repeating an epoch;
- its first export format writes what it says;
- many classes (``data.classes``) train and score per class where the stack can, and are refused in
  one line, with nothing written, where it cannot yet.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nailseg.contract import EPOCH_KEYS, EpochRecord
from tests.conftest import run_cli

RUN_FILES = {"config.yaml", "split.json", "checkpoints", "metrics.jsonl", "summary.json", "curves.png", "predictions"}
SUMMARY_KEYS = {"stack", "pipeline", "family", "arch", "encoder", "run", "val_iou", "val_dice", "val_precision",
                "val_recall", "val_metrics_at", "epochs", "global_step", "fit_time_s", "wall_time_s", "precision",
                "parameters", "device", "world_size", "peak_memory_mb", "versions", "normalization"}


def records_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


class StackContract:
    stack: str                      # the StackSpec name
    best_files: tuple[str, ...] = ("checkpoints/best.ckpt",)  # what "best" is, relative to the run folder
    semantic_iou_per_epoch = True   # metrics.jsonl carries val_iou each epoch (Mask R-CNN: COCO mAP instead)
    kill_resume = True              # run the SIGKILL test (a few epochs must fit in seconds)
    env: dict | None = None         # variables every command of this stack needs
    fresh = False                   # run commands in a new interpreter (not forked from the torch server)
    export: tuple[str, bool] | None = None  # (format, writes a folder); default: the spec's first export

    def cli(self, *args: str, **kwargs):
        return run_cli(*args, env=self.env, fresh=self.fresh, **kwargs)

    def eval_json(self, run: Path, out: Path, *args: str) -> dict:
        proc = self.cli("eval", str(run), "--split", "val", "--out", str(out), "--quiet", *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(out.read_text())

    def test_run_folder_has_the_shared_files(self, contract_run: Path):
        assert RUN_FILES <= {p.name for p in contract_run.iterdir()}
        for name in self.best_files:
            assert (contract_run / name).exists(), name

    def test_metrics_are_one_epoch_record_per_epoch(self, contract_run: Path):
        records = records_of(contract_run)
        assert [r["epoch"] for r in records] == list(range(len(records))) and records
        for r in records:
            typed = EpochRecord.from_dict(r)  # every key of the record is there
            assert typed.epoch_time_s > 0 and typed.step > 0 and typed.lr > 0 and math.isfinite(typed.train_loss)
            if self.semantic_iou_per_epoch:
                # Dice and IoU of the same pixels: iou <= dice <= 2 iou / (1 + iou) (equal when pooled,
                # below when averaged per batch, the map being concave); invented numbers miss it
                iou, dice = typed.val_iou, typed.val_dice
                assert iou <= dice + 1e-9 and dice <= 2 * iou / (1 + iou) + 1e-6, (iou, dice)
        steps = [r["step"] for r in records]
        assert steps == sorted(steps) and len(set(steps)) == len(steps)
        assert set(EPOCH_KEYS) <= set(records[-1])

    def test_summary_has_the_shared_keys_and_is_the_evaluation(self, contract_run: Path, tmp_path: Path):
        summary = json.loads((contract_run / "summary.json").read_text())
        assert SUMMARY_KEYS <= set(summary), SUMMARY_KEYS - set(summary)
        assert "backend" not in summary and summary["stack"] == self.stack
        assert summary["epochs"] == len(records_of(contract_run))
        evaluated = self.eval_json(contract_run, tmp_path / "val.json")
        assert summary["val_iou"] == pytest.approx(evaluated["iou"], abs=1e-9)
        assert summary["val_dice"] == pytest.approx(evaluated["dice"], abs=1e-9)

    def test_best_falls_back_to_last(self, contract_run: Path, tmp_path: Path):
        copy = tmp_path / contract_run.name
        shutil.copytree(contract_run, copy, ignore=shutil.ignore_patterns(".lock"))
        for name in self.best_files:
            (copy / name).unlink()
        fallback = self.eval_json(copy, tmp_path / "fallback.json", "--checkpoint", "best")
        last = self.eval_json(contract_run, tmp_path / "last.json", "--checkpoint", "last")
        assert fallback["iou"] == pytest.approx(last["iou"], abs=1e-9)

    def test_first_export_format_writes_it(self, contract_run: Path, tmp_path: Path):
        from nailseg.specs import STACKS

        if self.export is None:
            spec = STACKS[self.stack]
            self.export = (spec.exports[0], spec.exports[0] in spec.folder_exports)
        fmt, folder = self.export
        proc = self.cli("export", str(contract_run), "--format", fmt, "--out", str(tmp_path / f"model.{fmt}"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        written = Path(proc.stdout.strip().splitlines()[-1])
        assert written.exists() and written.is_dir() == folder

    multiclass_epochs = 6  # enough for the colour classes of ``class_data`` on this stack's tiny model

    def test_many_classes_train_and_score_per_class(self, train_args, class_data: Path, tmp_path: Path):
        """Three colour classes with an unlabelled band: the run scores each class, its mIoU is well
        above the 0.3 of a model that predicts skin everywhere, and eval and predict agree with it."""
        from nailseg.specs import STACKS
        from tests.conftest import CLASS_NAMES

        runs = tmp_path / "runs"
        spec = STACKS.get(self.stack)  # None: a plugin, registered in its CLI processes only
        capable = spec is not None and "multiclass" in spec.capabilities
        if train_args is None:  # a stack without a quick training: its family's defaults
            family = f"model: {{family: {spec.families[0]}}}\naugment: {{train: [{{name: hflip}}]}}\n"
            (tmp_path / "family.yaml").write_text(family)
            base = [str(tmp_path / "family.yaml"), f"run.dir={runs}", "run.name=classes"]
        else:
            base = train_args(runs, "classes", self.multiclass_epochs)
        args = [*base, f"data.root={class_data}",
                "data.classes=classes.txt", "data.split.val=0.25", "data.split.test=0.0", "data.cache=none"]
        proc = self.cli("train", *args)
        if not capable:
            assert proc.returncode == 2 and "data.classes: the" in proc.stderr, proc.stderr[-2000:]
            assert len(proc.stderr.strip().splitlines()) == 1 and not (runs / "classes").exists()
            return
        assert proc.returncode == 0, proc.stderr[-3000:]
        run = runs / "classes"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["val_miou"] == summary["val_iou"] > 0.5, summary
        assert set(summary["val_per_class_iou"]) == set(CLASS_NAMES)
        assert all(v is not None and v > 0.2 for v in summary["val_per_class_iou"].values()), summary
        evaluated = self.eval_json(run, tmp_path / "val.json")
        assert evaluated["miou"] == pytest.approx(summary["val_miou"], abs=1e-9)
        matrix = np.asarray(evaluated["confusion_matrix"])
        assert matrix.shape == (3, 3) and matrix.sum() == evaluated["n_images"] * 72 * 90  # the band is ignored
        assert (tmp_path / "val_confusion.png").stat().st_size > 2000
        out = tmp_path / "predicted"
        predicted = self.cli("predict", str(run), str(class_data / "images" / "00.png"), "--out", str(out), "--quiet")
        assert predicted.returncode == 0, predicted.stderr[-2000:]
        from PIL import Image

        mask = Image.open(out / "00_mask.png")
        assert mask.mode == "P" and set(np.unique(np.asarray(mask))) <= {0, 1, 2}
        assert len(np.unique(np.asarray(mask))) >= 2  # not one class everywhere

    @pytest.mark.slow
    @pytest.mark.parametrize("delay_s", [0.0, 0.5], ids=["at-the-line", "half-a-second-after"])
    def test_resume_after_sigkill_loses_no_epoch(self, train_args, tmp_path: Path, delay_s: float):
        """A kill as an epoch's line lands, or half a second later (near the next epoch's end on a
        fast stack): every line written before the kill survives the resume unchanged, since a
        line is written only after its checkpoint."""
        if not self.kill_resume:
            pytest.skip(f"the {self.stack} stack's resume is tested in its own module")
        runs = tmp_path / "runs"
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **(self.env or {})}
        proc = subprocess.Popen([sys.executable, "-m", "nailseg.cli", "train", *train_args(runs, "killed", 6)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = runs / "killed" / "metrics.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.05)
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = records_of(runs / "killed")
        assert 2 <= len(before) < 6, "the kill came too late to test anything"
        resumed = self.cli("train", "--resume", str(runs / "killed"))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        after = records_of(runs / "killed")
        assert [r["epoch"] for r in after] == list(range(6))  # every epoch once: none lost, none repeated
        # no epoch whose line was written was trained again: its line is the same
        assert [r["train_loss"] for r in after[: len(before)]] == [r["train_loss"] for r in before], (before, after)
        assert not (runs / "killed" / "epoch.staged.json").exists()
        assert json.loads((runs / "killed" / "summary.json").read_text())["epochs"] == 6
