import numpy as np
import pytest

from nailseg.core.augment import Affine, BrightnessContrast, HFlip, RandomResizedCrop, VFlip
from nailseg.core.data.balance import make_grouping
from nailseg.core.data.discover import Pair, find_pairs
from nailseg.config import BalanceConfig
from tests.conftest import REPO, write_image
from tests.core.data.test_balance import KEYS, assert_shares_hold
from tests.pipelines import coded_pair, denormalize

GEOMETRY = [HFlip(name="hflip"), VFlip(name="vflip"), Affine(name="affine", rotate=40, scale=(0.7, 1.3), p=0.8),
            RandomResizedCrop(name="random_resized_crop", scale=(0.4, 1.0), p=0.5)]


def _coded_pairs(tmp_path, n=6):
    image, mask = coded_pair(96, 80)
    pairs = []
    for i in range(n):
        ip = write_image(tmp_path / "images" / f"{i}.png", image)
        mp = write_image(tmp_path / "labels" / f"{i}.jpg", np.repeat(mask[..., None] * 255, 3, axis=2), quality=90)
        pairs.append(Pair(f"{i}.png", ip, mp))
    return pairs


@pytest.mark.parametrize("pipeline", ["albumentations", "tf"])
def test_masks_binary_and_aligned(tf, tmp_path, pipeline):
    from nailseg.stacks.keras.tfdata import build_dataset

    ds = build_dataset(_coded_pairs(tmp_path), GEOMETRY, (64, 64), batch_size=6, train=True, seed=1, pipeline=pipeline)
    moved = 0
    for images, masks in ds.take(1):
        assert images.shape == (6, 64, 64, 3) and images.dtype == tf.float32
        assert masks.shape == (6, 64, 64, 1)
        for img, m in zip(images.numpy(), masks.numpy()):
            assert set(np.unique(m)) <= {0.0, 1.0}
            red = denormalize(img.transpose(2, 0, 1))[..., 0]
            assert ((red > 127) == (m[..., 0] == 1)).mean() > 0.95
            moved += not np.array_equal(m[..., 0], coded_pair(64, 64)[1])
    assert moved > 0


@pytest.mark.parametrize("pipeline", ["albumentations", "tf"])
def test_crop_size_windows_the_training_batches_only(tf, tmp_path, pipeline):
    """data.crop_size: training batches are (32, 48) windows of the 64 px pictures, each at its own
    place and still aligned with its mask after the flips; evaluation batches stay whole."""
    from nailseg.stacks.keras.tfdata import build_dataset

    pairs = _coded_pairs(tmp_path)
    train = build_dataset(pairs, GEOMETRY[:2], (64, 64), batch_size=6, train=True, seed=1, pipeline=pipeline,
                          crop=(32, 48))
    images, masks = next(iter(train))
    assert images.shape == (6, 32, 48, 3) and masks.shape == (6, 32, 48, 1)
    for img, m in zip(images.numpy(), masks.numpy()):
        red = denormalize(img.transpose(2, 0, 1))[..., 0]
        assert ((red > 127) == (m[..., 0] == 1)).mean() > 0.95
    plain = build_dataset(pairs, [], (64, 64), batch_size=6, train=True, seed=1, pipeline=pipeline, crop=(32, 48))
    assert len({m.tobytes() for m in next(iter(plain))[1].numpy()}) > 1  # the window moves, with no op at all
    whole = build_dataset(pairs, GEOMETRY[:2], (64, 64), batch_size=6, train=False, seed=1, pipeline=pipeline,
                          crop=(32, 48))
    images, masks = next(iter(whole))
    assert images.shape == (6, 64, 64, 3) and len({m.tobytes() for m in masks.numpy()}) == 1


@pytest.mark.parametrize("pipeline", ["albumentations", "tf"])
def test_deterministic_for_a_fixed_seed(tf, synth_data, pipeline):
    from nailseg.stacks.keras.tfdata import build_dataset

    pairs = find_pairs(synth_data)[0][:8]
    ops = GEOMETRY + [BrightnessContrast(name="brightness_contrast")]

    def first(seed):
        ds = build_dataset(pairs, ops, (64, 64), batch_size=4, train=True, seed=seed, pipeline=pipeline)
        return [b[0].numpy() for b in ds.take(2)]

    a, b, c = first(3), first(3), first(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_balanced_stream_never_runs_dry(tf, tmp_path):
    from nailseg.stacks.keras.tfdata import balanced_files

    pairs = [Pair(k, tmp_path / k, tmp_path / k) for k in KEYS]
    grouping = make_grouping(KEYS, BalanceConfig(by="folder"))
    stream = iter(balanced_files(pairs, grouping, seed=0))
    epoch_size = 75
    drawn = [np.array([int(next(stream)[2]) for _ in range(epoch_size)]) for _ in range(30)]
    group_of_index = {i: name for i, name in enumerate(grouping.names)}
    groups = [group_of_index[i] for i in range(len(grouping.names))]
    assert_shares_hold(lambda e: drawn[e], groups, grouping.target, 30, epoch_size)


def test_mixed_precision_model_outputs_float32(tf):
    import tf_keras as keras

    from nailseg.config import SmModel as ModelConfig
    from nailseg.stacks.keras.models import build_sm_model

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_sm_model(ModelConfig(family="sm", encoder="resnet18"), (64, 64))
        assert model.layers[-2].compute_dtype == "float16"
        assert model.output.dtype == tf.float32
        out = model(np.zeros((1, 64, 64, 3), np.float32))
        assert out.dtype == tf.float32 and out.shape == (1, 64, 64, 1)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_bench_tfdata_writes_json_and_png(tf, synth_data, tmp_path):
    import json

    from nailseg.cli import main

    assert main(["bench", "tfdata", "--data", str(synth_data), "--size", "64", "--batch", "4", "--batches", "2",
                 "--repeats", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    assert [r["pipeline"] for r in results] == ["decode-only", "albumentations", "tf"]
    assert all(r["images_per_s"] > 0 for r in results)
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_train_runs_each_keras_policy_with_and_without_xla(tf, synth_data, tmp_path, capsys):
    """``nailseg bench train`` on a Keras config: one limit row and one pipeline row per policy and
    XLA setting that compiles; a setting XLA cannot compile is skipped with its reason, not a traceback."""
    import json

    from nailseg.cli import main

    assert main(["bench", "train", str(REPO / "configs" / "keras-cpu.yaml"), f"data.root={synth_data}",
                 "--size", "64", "--batch", "4", "--batches", "1", "--repeats", "1",
                 "--precision", "32-true", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())
    plain = [r for r in rows if not r["jit_compile"]]
    assert [r["pipeline"] for r in plain] == ["model limit (batch in memory)", "albumentations pipeline"]
    assert all(r["keras_policy"] == "float32" and r["images_per_s"] > 0 for r in rows)
    assert plain[1]["ratio"] == pytest.approx(plain[1]["images_per_s"] / plain[0]["images_per_s"])
    if not any(r["jit_compile"] for r in rows):  # sm's Unet upsamples with a gradient XLA lacks on CPU
        assert "XLA cannot compile this model here" in capsys.readouterr().err


@pytest.mark.parametrize("pipeline", ["albumentations", "tf"])
def test_tf_data_reads_the_decode_cache(tf, synth_data, tmp_path, pipeline):
    """The same tf.data pipeline fed from the disk cache gives the batches it gets from the files
    (through the same reduced-size loading), for a fixed seed."""
    from nailseg.core.data.cache import FileSource, open_cache
    from nailseg.stacks.keras.tfdata import build_dataset

    pairs = find_pairs(synth_data)[0][:8]
    cache = open_cache(pairs, 80, tmp_path, "train", progress=False)

    def first(source):
        ds = build_dataset(pairs, GEOMETRY, (64, 64), batch_size=4, train=True, seed=3, pipeline=pipeline, source=source)
        return [(b[0].numpy(), b[1].numpy()) for b in ds.take(2)]

    for (a, am), (b, bm) in zip(first(FileSource(pairs, 80)), first(cache)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(am, bm)


def test_tf_table_translates_every_claimed_op(tf):
    """The tf row of nailseg.specs: its table has exactly the claimed ops, and each one runs in
    tf_augment (p = 1) keeping the mask binary and, for geometry, on the red pixels."""
    from pydantic import TypeAdapter

    from nailseg.core.augment import AugmentOp
    from nailseg.specs import PIPELINE_SPECS
    from nailseg.stacks.keras.tfdata import TF_OPS, tf_augment

    assert set(TF_OPS) == PIPELINE_SPECS["tf"].ops
    image, mask = coded_pair(64, 64)
    for name in sorted(TF_OPS):
        op = TypeAdapter(AugmentOp).validate_python({"name": name, "p": 1.0})
        out, m = tf_augment(tf.constant(image, tf.float32), tf.constant(mask[..., None], tf.float32),
                            tf.constant([3, 4], tf.int64), [op], (64, 64), True)
        out, m = out.numpy(), m.numpy()[..., 0]
        assert out.shape == (64, 64, 3) and set(np.unique(m)) <= {0.0, 1.0} and m.sum() > 0, name
        if name in {"hflip", "vflip", "affine", "random_resized_crop"}:
            assert ((out[..., 0] > 127) == m.astype(bool)).mean() > 0.9, name
