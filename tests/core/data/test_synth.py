import pytest
import numpy as np

from nailseg.core.data.decode import read_image, read_mask
from nailseg.core.data.discover import find_pairs
from nailseg.core.data.synth import SynthConfig, draw_sample, synthesize
from nailseg.core.metrics import Counts, confusion, counts_scores


def test_layout_and_reproducible(tmp_path):
    a = synthesize(tmp_path / "a", SynthConfig(n=4, seed=5, width=64, height=48), progress=False)
    b = synthesize(tmp_path / "b", SynthConfig(n=4, seed=5, width=64, height=48), progress=False)
    pairs, problems = find_pairs(a)
    assert len(pairs) == 4 and not problems
    assert pairs[0].image.suffix == ".jpg" and pairs[0].mask.suffix == ".png"
    for pa, pb in zip(pairs, find_pairs(b)[0]):
        assert pa.image.read_bytes() == pb.image.read_bytes()
        img = read_image(pa.image)
        assert img.shape == (48, 64, 3)
        assert read_mask(pa.mask).shape == (48, 64)


def test_varied_nails_present():
    shares = [draw_sample(np.random.default_rng([1, i]), 192, 144)[1].mean() for i in range(30)]
    assert sum(s > 0 for s in shares) >= 25  # nearly every picture has nails
    nonzero = [s for s in shares if s > 0]
    assert max(nonzero) > 3 * min(nonzero)  # close-ups and whole hands


def test_colour_alone_does_not_solve_it():
    """The best per-colour classifier (fitted on the very pictures it is scored on) stays far
    from a perfect IoU: nail colours also occur on the background and the skin."""
    samples = [draw_sample(np.random.default_rng([2, i]), 192, 144) for i in range(40)]
    bins = 16
    fg = np.zeros((bins,) * 3)
    total = np.zeros((bins,) * 3)
    for img, mask in samples:
        q = (img // (256 // bins)).reshape(-1, 3)
        np.add.at(total, tuple(q.T), 1)
        np.add.at(fg, tuple(q[mask.reshape(-1)].T), 1)
    lookup = fg / np.maximum(total, 1) > 0.5
    counts = Counts()
    for img, mask in samples:
        q = img // (256 // bins)
        counts = counts + confusion(lookup[q[..., 0], q[..., 1], q[..., 2]], mask)
    assert counts_scores(counts)["iou"] < 0.6


def test_an_interrupted_synth_leaves_no_data_set(tmp_path, monkeypatch):
    """Drawn in a temporary folder and renamed at the end: a kill (here an exception at the 4th
    picture) leaves neither a half set that `data check` would accept nor a temporary folder."""
    import nailseg.core.data.synth as synth

    real, calls = synth.draw_sample, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "draw_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        synth.synthesize(tmp_path / "set", synth.SynthConfig(n=10, seed=0, width=96, height=64), progress=False)
    assert not (tmp_path / "set").exists()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synth, "draw_sample", real)
    (tmp_path / "empty").mkdir()
    synth.synthesize(tmp_path / "empty", synth.SynthConfig(n=3, seed=0, width=96, height=64), progress=False)
    assert len(list((tmp_path / "empty" / "images").iterdir())) == 3
