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
