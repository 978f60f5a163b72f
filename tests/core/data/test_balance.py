import json
from collections import Counter

import numpy as np
import pytest

from nailseg.cli import main
from nailseg.core.data.balance import draw_epoch, make_grouping, target_shares
from nailseg.errors import ConfigError, DataError
from nailseg.config import BalanceConfig

# 3 groups of very different sizes: the case balancing is for
KEYS = [f"big/{i}.jpg" for i in range(60)] + [f"mid/{i}.jpg" for i in range(12)] + [f"tiny/{i}.jpg" for i in range(3)]


def assert_shares_hold(draw, groups: list[str], target: dict[str, float], epochs: int, epoch_size: int):
    """Over a long draw every group gets its target share (within 5 binomial standard errors),
    and every group is still drawn in the last epoch."""
    drawn = [draw(e) for e in range(epochs)]
    total = np.concatenate(drawn)
    counts = Counter(groups[i] for i in total.tolist())
    n = len(total)
    for g, share in target.items():
        se = np.sqrt(share * (1 - share) / n)
        assert abs(counts[g] / n - share) <= 5 * se + 1e-9, (g, counts[g] / n, share)
    last = Counter(groups[i] for i in drawn[-1].tolist())
    assert all(last[g] > 0 for g, share in target.items() if share > 0), last


def _seed_tutorial_draw(groups: list[str], epoch_size: int, repeats: int = 3):
    """The original tutorials' recipe: each group's files repeated a fixed number of epochs, mixed with equal
    weights; once the small groups are used up only the big group is left."""
    rng = np.random.default_rng(0)
    pools = {g: [i for i, x in enumerate(groups) if x == g] * repeats for g in set(groups)}
    for pool in pools.values():
        rng.shuffle(pool)

    def draw(epoch: int) -> np.ndarray:
        out = []
        while len(out) < epoch_size:
            alive = [g for g, pool in pools.items() if pool]
            if not alive:
                break
            out.append(pools[alive[rng.integers(len(alive))]].pop())
        return np.array(out, dtype=int)

    return draw


def test_long_draw_matches_target_and_no_group_runs_dry():
    grouping = make_grouping(KEYS, BalanceConfig(by="folder"))
    assert grouping.target == pytest.approx({"big": 1 / 3, "mid": 1 / 3, "tiny": 1 / 3})
    p = grouping.sample_weights()
    assert_shares_hold(lambda e: draw_epoch(p, 75, seed=1, epoch=e), grouping.groups, grouping.target, 40, 75)


def test_the_seed_bug_fails_the_same_check():
    grouping = make_grouping(KEYS, BalanceConfig(by="folder"))
    with pytest.raises(AssertionError):
        assert_shares_hold(_seed_tutorial_draw(grouping.groups, 75), grouping.groups, grouping.target, 40, 75)


def test_weight_schemes():
    sizes = {"a": 100, "b": 25}
    assert target_shares(["a", "b"], sizes, "equal") == {"a": 0.5, "b": 0.5}
    assert target_shares(["a", "b"], sizes, "inverse") == {"a": 0.5, "b": 0.5}
    assert target_shares(["a", "b"], sizes, "sqrt_inverse") == pytest.approx({"a": 10 / 15, "b": 5 / 15})
    assert target_shares(["a", "b"], sizes, {"a": 3, "b": 1}) == {"a": 0.75, "b": 0.25}
    with pytest.raises(ConfigError, match="negative weight for group"):
        target_shares(["a", "b"], sizes, {"a": -1, "b": 1})
    with pytest.raises(ConfigError, match="no weight for group.*b"):
        target_shares(["a", "b"], sizes, {"a": 1})
    with pytest.raises(ConfigError, match="unknown group.*c"):
        target_shares(["a", "b"], sizes, {"a": 1, "b": 1, "c": 1})


def test_seeded_and_ddp_ranks_are_disjoint_parts_of_one_stream():
    grouping = make_grouping(KEYS, BalanceConfig(by="folder", weights="sqrt_inverse"))
    p = grouping.sample_weights()
    assert np.array_equal(draw_epoch(p, 75, 3, 5), draw_epoch(p, 75, 3, 5))
    assert not np.array_equal(draw_epoch(p, 75, 3, 5), draw_epoch(p, 75, 3, 6))
    full = draw_epoch(p, 76, 3, 5, rank=0, world_size=1)
    r0, r1 = draw_epoch(p, 76, 3, 5, 0, 2), draw_epoch(p, 76, 3, 5, 1, 2)
    assert len(r0) == len(r1) == 38
    assert np.array_equal(np.sort(np.concatenate([r0, r1])), np.sort(full))  # the union is the stream
    interleaved = np.empty(76, dtype=int)
    interleaved[0::2], interleaved[1::2] = r0, r1
    assert np.array_equal(interleaved, full)  # disjoint positions of it
    # over many epochs, the two ranks together hold the target shares
    assert_shares_hold(lambda e: np.concatenate([draw_epoch(p, 76, 3, e, 0, 2), draw_epoch(p, 76, 3, e, 1, 2)]),
                       grouping.groups, grouping.target, 40, 76)


def test_fg_bins_and_csv(tmp_path):
    fg = {k: v for k, v in zip(KEYS, np.geomspace(0.001, 0.3, len(KEYS)))}
    fg[KEYS[0]] = 0.0
    g = make_grouping(KEYS, BalanceConfig(by="fg_bins", bins=3), fg)
    assert g.names[0] == "no foreground" and len(g.names) == 4
    q = make_grouping(KEYS, BalanceConfig(by="fg_bins", bins=3, binning="quantile"), fg)
    assert sorted(q.sizes.values())[1:] in ([24, 25, 25], [25, 25, 24], [24, 25, 25])
    table = tmp_path / "groups.csv"
    table.write_text("file,hand\n" + "".join(f"{k},{'left' if i % 4 else 'right'}\n" for i, k in enumerate(KEYS)))
    c = make_grouping(KEYS, BalanceConfig(by="csv", csv=str(table), column="hand"))
    assert c.names == ["left", "right"]
    table.write_text("file,hand\n" + "".join(f"{k},x\n" for k in KEYS[1:]))
    with pytest.raises(DataError, match="no row for 'big/0.jpg'"):
        make_grouping(KEYS, BalanceConfig(by="csv", csv=str(table), column="hand"))
    with pytest.raises(ConfigError, match="no column 'side'"):
        make_grouping(KEYS, BalanceConfig(by="csv", csv=str(table), column="side"))


def test_balance_cli_table_json_and_png(tmp_path, capsys, synth_data):
    root = synth_data
    out = tmp_path / "chart.png"
    assert main(["data", "balance", str(root), "--by", "fg_bins", "--bins", "2", "--json", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sum(r["files"] for r in report["groups"]) == 32
    assert sum(r["observed_share"] for r in report["groups"]) == pytest.approx(1.0)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["data", "balance", str(root), "--by", "fg_bins", "--weights", "nope=1", "--out", str(out)]) == 2
    assert "unknown group(s) nope" in capsys.readouterr().err
