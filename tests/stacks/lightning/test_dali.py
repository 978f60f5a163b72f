import numpy as np
import pytest

pytest.importorskip("nvidia.dali")
torch = pytest.importorskip("torch")

from nailseg.core.augment import HFlip  # noqa: E402
from nailseg.core.data.discover import find_pairs  # noqa: E402
from nailseg.stacks.lightning.loaders.dali import DaliLoader  # noqa: E402


@pytest.mark.parametrize("n,drop_last,lengths", [(12, False, [4, 4, 4]), (10, False, [4, 4, 2]),
                                                 (10, True, [4, 4])])
def test_length_and_epochs(synth_data, n, drop_last, lengths):
    pairs = find_pairs(synth_data)[0][:n]
    loader = DaliLoader(pairs, [HFlip(name="hflip")], (64, 64), batch_size=4, train=True, seed=0,
                        drop_last=drop_last, device="cpu", num_threads=1)
    assert len(loader) == len(lengths)
    for _ in range(3):  # every epoch the same number of batches: none skipped, none empty
        assert [b["image"].shape[0] for b in loader] == lengths


def test_epoch_stopped_early_is_drained(synth_data):
    pairs = find_pairs(synth_data)[0][:12]
    loader = DaliLoader(pairs, [], (64, 64), batch_size=4, train=False, seed=0, drop_last=False, device="cpu",
                        num_threads=1)
    first = next(iter(loader))["image"]
    for _ in iter(loader):  # a new epoch after stopping early starts at the beginning
        pass
    again = next(iter(loader))["image"]
    assert torch.equal(first, again)


def test_validation_order_matches_files(synth_data):
    """Without augmentation, DALI's batches equal the CPU pipeline's resize + normalise."""
    from nailseg.core.augment import to_albumentations
    from nailseg.core.data.decode import read_image, read_mask

    pairs = find_pairs(synth_data)[0][:4]
    batch = next(iter(DaliLoader(pairs, [], (64, 64), batch_size=4, train=False, seed=0, drop_last=False,
                                 device="cpu", num_threads=1)))
    transform = to_albumentations([], (64, 64), train=False)
    for i, pair in enumerate(pairs):
        ref = transform(image=read_image(pair.image), mask=read_mask(pair.mask).astype(np.uint8))
        # same file, same place: nearest-neighbour grids of OpenCV and DALI differ only at edges
        assert (batch["mask"][i, 0].numpy() == ref["mask"]).mean() > 0.97
        assert np.abs(batch["image"][i].numpy().transpose(1, 2, 0) - ref["image"]).mean() < 0.1


@pytest.mark.gpu
def test_mixed_decoder_on_gpu(synth_data):
    pairs = find_pairs(synth_data)[0][:8]
    loader = DaliLoader(pairs, [HFlip(name="hflip")], (64, 64), batch_size=4, train=True, seed=0,
                        drop_last=False, device="gpu")
    batch = next(iter(loader))
    assert batch["image"].is_cuda and batch["mask"].is_cuda
    assert set(torch.unique(batch["mask"]).tolist()) <= {0.0, 1.0}


def test_dali_keeps_class_indices_of_palette_masks_and_fills_uncovered_pixels_with_the_ignore_value(tmp_path):
    """Many classes through DALI (CPU): palette PNG masks (which DALI alone would decode as grey
    levels) become index PNGs, move with the image (nearest neighbour), and the pixels an affine
    uncovers are ignored, never class 0. Four classes, each its own red level, and an unlabelled band."""
    from PIL import Image

    from nailseg.core.augment import Affine
    from nailseg.core.data.discover import find_pairs
    from nailseg.core.labels import LabelSpec, palette
    from tests.conftest import write_image
    from tests.pipelines import denormalize

    labels = np.zeros((64, 64), np.uint8)
    labels[8:30, 8:40], labels[34:60, 10:30], labels[36:60, 36:60] = 1, 2, 3
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 60 + 60 * labels
    image[..., 1:] = 100
    labels[:, 58:] = 255
    colours = np.zeros((256, 3), np.uint8)
    colours[:4] = palette(4)
    (tmp_path / "data" / "labels").mkdir(parents=True)
    for i in range(6):
        write_image(tmp_path / "data" / "images" / f"{i}.png", image)
        mask = Image.fromarray(labels, mode="P")
        mask.putpalette(colours.flatten().tolist())
        mask.save(tmp_path / "data" / "labels" / f"{i}.png")
    pairs = find_pairs(tmp_path / "data")[0]
    spec = LabelSpec(("a", "b", "c", "d"), 255)
    plain = next(iter(DaliLoader(pairs, [], (64, 64), batch_size=6, train=False, seed=0, drop_last=False,
                                 device="cpu", num_threads=1, labels=spec, label_folder=tmp_path / "idx")))
    assert np.array_equal(plain["mask"][0, 0].numpy(), labels)  # the class indices, not palette grey levels
    affine = Affine(name="affine", rotate=30, scale=(0.7, 0.9), translate=0.2, p=1.0)
    batch = next(iter(DaliLoader(pairs, [affine], (64, 64), batch_size=6, train=True, seed=0, drop_last=False,
                                 device="cpu", num_threads=1, labels=spec, label_folder=tmp_path / "idx")))
    masks = batch["mask"][:, 0].numpy()
    assert set(np.unique(masks)) <= {0, 1, 2, 3, 255} and (masks == 255).mean() > 0.1
    reds = np.stack([denormalize(x.numpy())[..., 0] for x in batch["image"]])
    uncovered = reds < 20
    assert uncovered.mean() > 0.05 and (masks[uncovered] == 255).mean() > 0.97
    for k in range(4):
        at_k = masks == k
        assert at_k.sum() > 100 and (np.abs(reds[at_k] - (60 + 60 * k)) < 30).mean() > 0.9, k


@pytest.mark.slow
def test_a_many_class_run_trains_on_the_dali_pipeline(class_data, tmp_path):
    """The three colour classes trained end to end with data.pipeline=dali (its CPU pipeline here):
    well past the 0.3 mIoU of a model that predicts skin everywhere; the index masks stay in the run."""
    import json

    from tests.conftest import REPO, TINY_TRAIN, run_cli

    proc = run_cli("train", str(REPO / "configs" / "demo-cpu.yaml"), f"data.root={class_data}", *TINY_TRAIN,
                   "data.pipeline=dali", "data.cache=none", "data.classes=classes.txt", "data.split.val=0.25",
                   "data.split.test=0.0", "trainer.max_epochs=6", "optim.lr=0.003", f"run.dir={tmp_path}",
                   "run.name=dali-classes", "logging.tensorboard=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "dali-classes"
    assert json.loads((run / "summary.json").read_text())["val_miou"] > 0.5
    assert len(list((run / "dali_labels").glob("*.png"))) == 24
