"""``nailseg eject`` on the Lightning stack: a plain Lightning + smp script that imports no nailseg,
whose augmentation is nailseg's own. That it trains as far as ``nailseg train`` does is checked by
tutorial 03, which trains both on the same split (tests/docs/test_notebooks.py, ``AGREE``)."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
from pathlib import Path

import pytest

from tests.conftest import REAL_DATA, REPO, run_cli

pytestmark = pytest.mark.slow
RECIPE = REPO / "configs" / "nails-pretrained-cpu.yaml"
# The pretrained recipe on the real pairs, shrunk to Lite0 at 160 px whole pictures for 8 epochs.
BUDGET = ["model.encoder=tu-tf_efficientnet_lite0", "data.image_size=160", "data.crop_size=null",
          "trainer.max_epochs=8", "trainer.max_time=null", "optim.warmup_epochs=1", "data.split.val=0.2",
          "data.split.test=0.0", "trainer.precision=32-true", "data.num_workers=0", "logging.predictions=0"]


def _close(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


@pytest.fixture(scope="module")
def ejected(tmp_path_factory) -> Path:
    if not (REAL_DATA / "images").is_dir():
        pytest.skip(f"real nails pairs not found at {REAL_DATA}")
    real_data = REAL_DATA
    out = tmp_path_factory.mktemp("eject") / "trainer"
    proc = run_cli("eject", str(RECIPE), f"data.root={real_data}", *BUDGET, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _load(script: Path):
    spec = importlib.util.spec_from_file_location("ejected_train", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_imports_no_nailseg_and_holds_the_runs_split(ejected: Path, real_data):
    assert sorted(p.name for p in ejected.iterdir()) == ["README.md", "encoder_weights.pt", "split.json", "train.py"]
    tree = ast.parse((ejected / "train.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "nailseg" not in imported and {"lightning", "segmentation_models_pytorch", "albumentations"} <= imported
    split = json.loads((ejected / "split.json").read_text())
    assert len(split["train"]) == 32 and len(split["val"]) == 8 and split["test"] == []  # 40 pairs, val 0.2
    assert all(Path(image).parent == Path(real_data).resolve() / "images" for image, _ in split["train"])


def test_the_scripts_augmentation_is_nailsegs_own(ejected: Path):
    import albumentations as A

    from nailseg.config import load_experiment
    from nailseg.core.augment import to_albumentations

    exp = load_experiment(RECIPE, BUDGET)
    script = _load(ejected / "train.py")
    ours = to_albumentations(exp.augment.train, exp.data.size_hw, norm=exp.normalization, crop=exp.data.crop_hw)
    assert _close(A.to_dict(script.TRAIN_AUGMENT), A.to_dict(ours))
    assert _close(A.to_dict(script.EVAL_TRANSFORM),
                  A.to_dict(to_albumentations([], exp.data.size_hw, train=False, norm=exp.normalization)))
    assert script.IMAGE_SIZE == (160, 160) and script.EPOCHS == 8 and script.MEAN == exp.normalization.mean


def test_eject_refuses_what_it_cannot_write_and_leaves_nothing(synth_data, tmp_path):
    out = tmp_path / "balanced"
    proc = run_cli("eject", str(REPO / "configs" / "demo-cpu.yaml"), f"data.root={synth_data}",
                   "data.balance={by: fg_bins}", "--out", str(out))
    assert proc.returncode == 2 and "data.balance" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".balanced.*"))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep")
    proc = run_cli("eject", str(REPO / "configs" / "demo-cpu.yaml"), f"data.root={synth_data}", "--out", str(taken))
    assert proc.returncode == 2 and "never overwrites" in proc.stderr
    assert [p.name for p in taken.iterdir()] == ["mine.txt"]


SMALL = ["data.image_size=64", "data.crop_size=null", "data.num_workers=0", "trainer.precision=32-true"]


@pytest.mark.parametrize("config", ["hf-pretrained-cpu.yaml", "segformer-b0-nails-cpu.yaml"])
def test_the_transformers_script_is_nailsegs_model_in_a_lightning_module(config, synth_data, tmp_path):
    """The transformers families eject as their own classes (UperNet over timm's network, SegFormer)
    inside the same LightningModule: the same tensors as nailseg's model, the same output, and it
    trains (one batch through Lightning's Trainer)."""
    import lightning as L
    import torch

    from nailseg.config import load_experiment
    from nailseg.stacks.lightning.models import build_model

    overrides = [f"data.root={synth_data}", *SMALL]
    out = tmp_path / "trainer"
    proc = run_cli("eject", str(REPO / "configs" / config), *overrides, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    tree = ast.parse((out / "train.py").read_text())
    imported = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "transformers" in imported and "nailseg" not in imported
    script = _load(out / "train.py")
    theirs = script.Segmenter()
    ours = build_model(load_experiment(REPO / "configs" / config, overrides).model)
    assert type(theirs.model) is type(ours.hf)
    mine, yours = theirs.model.state_dict(), ours.hf.state_dict()
    assert mine.keys() == yours.keys() and all(mine[k].shape == yours[k].shape for k in mine)
    if config.startswith("hf"):  # the ImageNet encoder, as nailseg loaded it
        assert all(torch.equal(mine[k], yours[k]) for k in mine if k.startswith("backbone."))
    theirs.model.load_state_dict(yours)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval()(x), ours.eval()(x))
    theirs.train()
    before = {k: v.clone() for k, v in theirs.model.state_dict().items()}
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.fit(theirs, datamodule=script.PairDataModule(batch_size=2))
    assert any(not torch.equal(before[k], v) for k, v in theirs.model.state_dict().items())  # it learned a step


def test_the_kornia_script_augments_on_the_batch_as_nailseg_does(synth_data, tmp_path):
    """``data.pipeline: kornia`` ejects as an ``AugmentationSequential`` in ``on_after_batch_transfer``:
    the same kornia steps as nailseg's ``GpuAugment``, the same normalised validation batch, and a
    training step through Lightning's Trainer."""
    import lightning as L
    import torch

    from nailseg.config import load_experiment
    from nailseg.stacks.lightning.loaders.kornia import device_augment

    overrides = [f"data.root={synth_data}", "data.pipeline=kornia", "data.image_size=96", "data.crop_size=64",
                 "data.num_workers=0", "trainer.precision=32-true", "model.encoder_weights=none"]
    out = tmp_path / "trainer"
    proc = run_cli("eject", str(RECIPE), *overrides, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = _load(out / "train.py")
    theirs = script.Segmenter()
    ours = device_augment(load_experiment(RECIPE, overrides))
    assert repr(theirs.augment) == repr(ours.sequential)  # kornia's repr lists every argument of every step
    assert "K.RandomCrop(size=(64, 64))" in (out / "train.py").read_text()
    image = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    mask = (torch.rand(2, 1, 96, 96) > 0.5).float()
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    theirs.trainer = trainer  # not training: the hook only normalises, as nailseg's does for validation
    batch = theirs.on_after_batch_transfer({"image": image, "mask": mask}, 0)
    expected = ours(image, mask, train=False)
    torch.testing.assert_close(batch["image"], expected[0])
    assert torch.equal(batch["mask"], expected[1])
    before = {k: v.clone() for k, v in theirs.model.state_dict().items()}
    trainer.fit(theirs, datamodule=script.PairDataModule(batch_size=2))
    assert any(not torch.equal(before[k], v) for k, v in theirs.model.state_dict().items())


def test_the_dali_script_reads_through_nailsegs_own_dali_file(synth_data, tmp_path):
    """``data.pipeline: dali`` ejects with ``dali_pipeline.py`` beside the script (the file nailseg's DALI
    loader runs): the script's validation batches equal nailseg's, and it trains a step in Lightning."""
    pytest.importorskip("nvidia.dali")
    import lightning as L
    import torch

    from nailseg.config import load_experiment
    from nailseg.core.data.discover import find_pairs
    from nailseg.stacks.lightning.loaders import build_loaders
    from nailseg.stacks.lightning.templates import dali_pipeline

    overrides = [f"data.root={synth_data}", "data.pipeline=dali", "data.image_size=96", "data.crop_size=64",
                 "data.num_workers=0", "trainer.precision=32-true", "model.encoder_weights=none",
                 "trainer.batch_size=4"]
    out = tmp_path / "trainer"
    proc = run_cli("eject", str(RECIPE), *overrides, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "dali_pipeline.py").read_text() == Path(dali_pipeline.__file__).read_text()
    assert "nailseg" not in {n.module.split(".")[0] for n in ast.walk(ast.parse((out / "dali_pipeline.py").read_text()))
                             if isinstance(n, ast.ImportFrom) and n.module}
    script = _load(out / "train.py")
    exp = load_experiment(RECIPE, overrides)
    assert [op.name for op in script.OPS] == [op.name for op in exp.augment.train] and script.CROP == (64, 64)
    assert [vars(op) for op in script.OPS] == [op.model_dump() for op in exp.augment.train]
    split = json.loads((out / "split.json").read_text())
    by_image = {str(p.image.resolve()): p for p in find_pairs(synth_data)[0]}
    val_pairs = [by_image[image] for image, _ in split["val"]]  # in the script's order
    data = script.PairDataModule(batch_size=4)
    theirs = next(iter(data.val_dataloader()))
    ours = next(iter(build_loaders(exp, val_pairs, val_pairs)[1]))
    assert torch.equal(theirs["image"], ours["image"]) and torch.equal(theirs["mask"], ours["mask"])
    module = script.Segmenter()
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False).fit(module, datamodule=data)
    assert any(not torch.equal(before[k], v) for k, v in module.model.state_dict().items())
