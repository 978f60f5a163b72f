import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nailseg.core.data.balance import make_grouping  # noqa: E402
from nailseg.core.data.discover import find_pairs  # noqa: E402
from nailseg.config import BalanceConfig, load_experiment  # noqa: E402
from nailseg.stacks.lightning.loaders.dataloader import BalancedSampler, build_loader  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.core.data.test_balance import KEYS, assert_shares_hold  # noqa: E402


def test_loader_batches_are_aligned(synth_data):
    exp = load_experiment(REPO / "configs" / "demo-cpu.yaml",
                          [f"data.root={synth_data}", "data.image_size=64", "trainer.batch_size=4", "data.num_workers=0"])
    pairs, _ = find_pairs(synth_data)
    batch = next(iter(build_loader(exp, pairs, train=True)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 1, 64, 64)
    assert set(torch.unique(batch["mask"]).tolist()) <= {0.0, 1.0}


def test_crop_size_windows_the_training_batches_only(synth_data):
    from nailseg.stacks.lightning.loaders import build_loaders

    exp = load_experiment(REPO / "configs" / "demo-cpu.yaml",
                          [f"data.root={synth_data}", "data.image_size=96", "data.crop_size=[32,64]",
                           "trainer.batch_size=4", "data.num_workers=0"])
    pairs, _ = find_pairs(synth_data)
    train, val = build_loaders(exp, pairs[:8], pairs[8:12])
    batch = next(iter(train))
    assert batch["image"].shape == (4, 3, 32, 64) and batch["mask"].shape == (4, 1, 32, 64)
    assert next(iter(val))["image"].shape == (4, 3, 96, 96)


def test_balanced_sampler_long_run():
    grouping = make_grouping(KEYS, BalanceConfig(by="folder"))
    sampler = BalancedSampler(grouping.sample_weights(), epoch_size=75, seed=0)

    def draw(epoch):
        sampler.set_epoch(epoch)
        return np.array(list(sampler))

    assert len(sampler) == 75
    assert_shares_hold(draw, grouping.groups, grouping.target, 40, 75)
    sampler.set_epoch(3)
    assert np.array_equal(np.array(list(sampler)), sampler.full_stream(3))


def test_cached_and_uncached_batches_are_identical(synth_data, tmp_path):
    """Fixed seed, no random augmentation, two worker processes: the RAM and disk caches give the
    very batches the files give."""
    pairs, _ = find_pairs(synth_data)

    def batches(cache: str):
        exp = load_experiment(REPO / "configs" / "demo-cpu.yaml",
                              [f"data.root={synth_data}", "data.image_size=64", "trainer.batch_size=4",
                               "data.num_workers=2", f"data.cache={cache}", f"data.cache_dir={tmp_path / 'c'}",
                               "augment.train=[]"])
        torch.manual_seed(0)
        return list(build_loader(exp, pairs[:12], train=True, drop_last=True))

    uncached = batches("none")
    for mode in ("ram", "disk"):
        cached = batches(mode)
        assert len(cached) == len(uncached) == 3
        for a, b in zip(uncached, cached):
            assert torch.equal(a["index"], b["index"])
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert len(list((tmp_path / "c").glob("train-*.bin"))) == 1


def test_cache_refused_for_dali_with_the_reason(synth_data):
    from nailseg.errors import ConfigError

    with pytest.raises(ConfigError, match="data.cache: ram cannot serve the dali pipeline: DALI reads"):
        load_experiment(REPO / "configs" / "demo-cpu.yaml", [f"data.root={synth_data}", "data.pipeline=dali",
                                                              "data.cache=ram"])


def test_augmented_batches_follow_the_seed(synth_data):
    """albumentations keeps its own random state: the loader seeds it from torch's seed per process, so
    a rerun with the same seed augments the same way (the same config retrains to the same score),
    another seed differently, and two workers draw different streams."""
    exp = load_experiment(REPO / "configs" / "demo-cpu.yaml",
                          [f"data.root={synth_data}", "data.image_size=64", "trainer.batch_size=8", "data.num_workers=2"])
    pairs, _ = find_pairs(synth_data)

    def first_batches(seed: int) -> list:
        torch.manual_seed(seed)
        loader = build_loader(exp, [pairs[0]] * 16, train=True)  # one photo: only the augmentation differs
        return [batch["image"] for batch in loader]

    a, again, other = first_batches(3), first_batches(3), first_batches(4)
    assert all(torch.equal(x, y) for x, y in zip(a, again))
    assert not torch.equal(a[0], other[0])
    assert not torch.equal(a[0], a[1])  # worker 0 and worker 1 (consecutive batches) augment differently
