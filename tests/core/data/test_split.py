import pytest

from nailseg.core.data.split import load_split, make_fold_split, make_split, save_split
from nailseg.errors import DataError

KEYS = [f"{i:03d}.jpg" for i in range(50)]


def test_deterministic_and_disjoint():
    a = make_split(KEYS, 0.2, 0.1, seed=3)
    b = make_split(list(reversed(KEYS)), 0.2, 0.1, seed=3)
    assert a == b
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (35, 10, 5)
    assert set(a["train"]) | set(a["val"]) | set(a["test"]) == set(KEYS)
    assert not set(a["train"]) & set(a["val"]) and not set(a["val"]) & set(a["test"])
    assert make_split(KEYS, 0.2, 0.1, seed=4) != a


def test_tiny_sets_still_validate():
    s = make_split(["a", "b", "c"], 0.1, 0.1, seed=0)
    assert len(s["val"]) == 1 and len(s["test"]) == 1 and len(s["train"]) == 1


def test_bad_fractions_and_round_trip(tmp_path):
    with pytest.raises(DataError):
        make_split(KEYS, 0.6, 0.5, seed=0)
    s = make_split(KEYS, 0.2, 0.2, seed=1)
    save_split(tmp_path / "split.json", s, seed=1)
    assert load_split(tmp_path / "split.json") == s
    with pytest.raises(DataError, match="split file not found"):
        load_split(tmp_path / "nope.json")


@pytest.mark.parametrize("val", [0.0, 0.1, 0.25])
def test_a_fold_holds_out_test_and_validates_inside_the_training_folds(val):
    keys = [f"k{i:02d}.jpg" for i in range(40)]
    held_out = []
    for fold in range(5):
        split = make_fold_split(keys, 5, fold, seed=42, val=val)
        assert len(split["test"]) == 8
        assert not set(split["val"]) & set(split["test"]), "validation must never see the held-out fold"
        assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))
        assert sorted(split["train"] + split["val"] + split["test"]) == keys
        assert len(split["val"]) == (0 if val == 0 else max(1, round(val * 32)))
        held_out += split["test"]
    assert sorted(held_out) == keys  # every pair is scored exactly once
