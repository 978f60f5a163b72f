"""The decode cache: same pairs as uncached loading, invalidation, crash safety, one copy for all workers."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nailseg.core.data import cache as cache_mod
from nailseg.core.data.cache import FileSource, load_pair, open_cache, target_size
from nailseg.core.data.decode import read_image
from nailseg.core.data.discover import find_pairs
from tests.conftest import write_image


def _pairs(root: Path, n: int = 6, size=(300, 200)):
    rng = np.random.default_rng(1)
    w, h = size
    for i in range(n):
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        write_image(root / "images" / f"p{i}.jpg", image, quality=90)
        mask = np.zeros((h, w), np.uint8)
        mask[20 + i:120, 30:150 + i] = 255
        write_image(root / "labels" / f"p{i}.png", mask)
    return find_pairs(root)[0]


def test_cached_pairs_are_the_uncached_pairs(tmp_path):
    pairs = _pairs(tmp_path / "data")
    cache = open_cache(pairs, 160, tmp_path / "cache", "train", progress=False)
    files = FileSource(pairs, 160)
    assert len(cache) == len(files) == 6
    for i in range(len(pairs)):
        (a, m), (b, n) = cache[i], files[i]
        assert a.dtype == np.uint8 and a.shape == (107, 160, 3) and m.shape == (107, 160)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(m, n)
        assert set(np.unique(m)) <= {0, 1}


def test_reopening_reads_the_file_instead_of_decoding(tmp_path, monkeypatch):
    pairs = _pairs(tmp_path / "data")
    open_cache(pairs, 160, tmp_path / "cache", "train", progress=False)
    monkeypatch.setattr(cache_mod, "load_pair", lambda *a: pytest.fail("decoded again"))
    again = open_cache(pairs, 160, tmp_path / "cache", "train", progress=False)
    assert again[0][0].shape == (107, 160, 3)


def test_a_changed_file_is_decoded_again_and_only_it(tmp_path, monkeypatch):
    pairs = _pairs(tmp_path / "data")
    open_cache(pairs, 160, tmp_path / "cache", "train", progress=False)
    changed = np.full((200, 300, 3), 200, np.uint8)
    write_image(pairs[2].image, changed, quality=95)
    os.utime(pairs[2].image, ns=(time.time_ns(), time.time_ns() + 10**9))
    decoded = []
    real = cache_mod.load_pair
    monkeypatch.setattr(cache_mod, "load_pair",
                        lambda pair, longest, labels=None: decoded.append(pair.key) or real(pair, longest, labels))
    cache = open_cache(pairs, 160, tmp_path / "cache", "train", progress=False)
    assert decoded == [pairs[2].key]
    assert abs(int(cache[2][0].mean()) - 200) <= 2
    np.testing.assert_array_equal(cache[3][0], load_pair(pairs[3], 160)[0])
    assert len(list((tmp_path / "cache").glob("train-*.bin"))) == 1  # the old cache file is gone


def test_a_different_cache_size_is_another_cache(tmp_path):
    pairs = _pairs(tmp_path / "data")
    a = open_cache(pairs, 160, tmp_path / "cache", "train", progress=False)
    b = open_cache(pairs, 96, tmp_path / "cache", "train", progress=False)
    assert a.bin_path != b.bin_path and b[0][0].shape == (64, 96, 3)


KILLED_WRITER = """
import sys, time
from nailseg.core.data import cache
from nailseg.core.data.discover import find_pairs
real = cache.load_pair
def slow(pair, longest, labels=None):
    time.sleep(0.4)
    return real(pair, longest, labels)
cache.load_pair = slow
pairs, _ = find_pairs(sys.argv[1])
cache.open_cache(pairs, 160, sys.argv[2], "train", progress=False, threads=1)
"""


def test_a_killed_cache_write_is_never_read_as_valid(tmp_path):
    pairs = _pairs(tmp_path / "data", n=8)
    folder = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path / "data"), str(folder)])
    deadline = time.time() + 60
    while not list(folder.glob(".train-*.tmp")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(folder.glob(".train-*.tmp")), "the writer never started (its output: see above)"
    time.sleep(0.5)  # part of the data is written
    assert proc.poll() is None, "the writer ended before the kill: nothing was interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(folder.glob("train-*.json")), "a manifest exists for an unfinished write"
    decoded = []
    real = cache_mod.load_pair
    cache_mod_load = lambda pair, longest, labels=None: decoded.append(pair.key) or real(pair, longest, labels)  # noqa: E731
    original, cache_mod.load_pair = cache_mod.load_pair, cache_mod_load
    try:
        cache = open_cache(pairs, 160, folder, "train", progress=False)
    finally:
        cache_mod.load_pair = original
    assert len(decoded) == 8  # everything decoded again, nothing taken from the killed write
    for i in range(8):
        np.testing.assert_array_equal(cache[i][0], load_pair(pairs[i], 160)[0])
    assert not list(folder.glob(".train-*.tmp"))  # the dead writer's temp file is cleaned up


def test_a_truncated_bin_is_not_reused(tmp_path):
    pairs = _pairs(tmp_path / "data")
    cache = open_cache(pairs, 160, tmp_path / "cache", "train", progress=False)
    with open(cache.bin_path, "r+b") as fh:
        fh.truncate(100)
    again = open_cache(pairs, 160, tmp_path / "cache", "train", progress=False)
    np.testing.assert_array_equal(again[5][0], load_pair(pairs[5], 160)[0])


def _anonymous_kb() -> int:
    """The process's anonymous memory: where a copied (pickled) cache would live; a shared
    file mapping is file-backed and never counts here."""
    with open("/proc/self/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Anonymous:"):
                return int(line.split()[1])
    raise AssertionError("no Anonymous line in smaps_rollup")


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc")
def test_spawned_workers_share_one_copy(tmp_path):
    """The cache pickles as its path: two spawned workers (how a DataLoader with the spawn start
    method gets its dataset) map one file, and touching every page of it grows their anonymous
    memory by far less than one copy (a pickled dict of arrays would add a whole copy each)."""
    pairs = _pairs(tmp_path / "data", n=24, size=(640, 480))
    cache = open_cache(pairs, 640, tmp_path / "cache", "train", progress=False)
    assert cache.nbytes > 25 * 2**20
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2, initializer=_note_baseline) as pool:
        results = pool.map(_page_in, [cache, cache], chunksize=1)
    for before, after in results:
        assert (after - before) * 1024 < cache.nbytes / 4, (before, after, cache.nbytes)
    assert len(list((tmp_path / "cache").glob("*.bin"))) == 1


_BASELINE = {}


def _note_baseline() -> None:
    _BASELINE["kb"] = _anonymous_kb()  # the worker before it received any cache


def _page_in(cache) -> tuple[int, int]:
    before = _BASELINE["kb"]  # taken before unpickling: a copied cache would be counted
    mapped = cache._mapped()
    checksum = sum(int(mapped[i:i + 2**20].sum(dtype=np.uint64)) for i in range(0, len(mapped), 2**20))
    image, mask = cache[len(cache) - 1]  # reads work in the worker
    after = _anonymous_kb()
    assert image.shape[2] == 3 and mask.ndim == 2
    assert checksum > 0 and mapped.shape[0] == cache.nbytes
    return before, after


def test_reduced_size_decoding_keeps_truncation_detection(tmp_path):
    big = np.random.default_rng(0).integers(0, 255, (800, 1200, 3), dtype=np.uint8)
    path = write_image(tmp_path / "big.jpg", big, quality=90)
    small = read_image(path, at_least=(300, 200))
    assert small.shape == (200, 300, 3)  # decoded at 1/4 scale by libjpeg
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    from nailseg.errors import DataError

    with pytest.raises(DataError, match="truncated"):
        read_image(path, at_least=(300, 200))


def test_target_size_never_upscales():
    assert target_size(300, 200, 160) == (160, 107)
    assert target_size(100, 50, 160) == (100, 50)
    assert target_size(100, 50, None) == (100, 50)


def test_auto_falls_back_to_none_when_it_does_not_fit(tmp_path, monkeypatch):
    pairs = _pairs(tmp_path / "data")
    monkeypatch.setattr(cache_mod, "_available_memory", lambda: 1000)
    assert cache_mod.resolve_mode("auto", pairs, 160, 0.5) == "none"
    from nailseg.errors import ConfigError

    with pytest.raises(ConfigError, match="data.cache: ram needs"):
        cache_mod.resolve_mode("ram", pairs, 160, 0.5)
    monkeypatch.setattr(cache_mod, "_available_memory", lambda: 10**12)
    assert cache_mod.resolve_mode("auto", pairs, 160, 0.5) == "ram"


def test_manifest_records_every_entry(tmp_path):
    pairs = _pairs(tmp_path / "data")
    cache = open_cache(pairs, 160, tmp_path / "cache", "train", progress=False)
    meta = json.loads(cache.bin_path.with_suffix(".json").read_text())
    assert meta["nbytes"] == cache.bin_path.stat().st_size == cache.nbytes
    assert len({e["key"] for e in meta["entries"]}) == len(pairs)


RAM_CACHE_OWNER = """
import os, signal, sys
from pathlib import Path
from nailseg.config import DataConfig
from nailseg.core.data import cache
from nailseg.core.data.discover import find_pairs
cache.SHM = Path(sys.argv[2])
pairs = find_pairs(sys.argv[1])[0]
cache.open_source(DataConfig(root=sys.argv[1], image_size=128, cache="ram"), pairs, "train", None,
                  pipeline="albumentations", progress=False)
if sys.argv[3] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_ram_caches_go_at_exit_and_a_killed_owners_at_the_next_start(tmp_path, monkeypatch):
    _pairs(tmp_path / "data")
    shm = tmp_path / "shm"
    shm.mkdir()
    folder = shm / f"nailseg-cache-{os.getuid()}"

    def owner(end: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", RAM_CACHE_OWNER, str(tmp_path / "data"), str(shm), end],
                              capture_output=True, text=True, timeout=120)

    assert owner("exit").returncode == 0
    assert not list(folder.iterdir())  # cache, manifest and lock removed at exit
    killed = owner("kill")
    assert killed.returncode == -signal.SIGKILL
    left = sorted(p.name for p in folder.iterdir())
    assert [n.rsplit(".", 1)[1] for n in left] == ["lock", "bin", "json"], left  # what a kill leaves
    monkeypatch.setattr(cache_mod, "SHM", shm)
    from nailseg.config import DataConfig

    source = cache_mod.open_source(DataConfig(root=str(tmp_path / "data"), image_size=128, cache="ram"),
                                   find_pairs(tmp_path / "data")[0], "train", None, pipeline="albumentations",
                                   progress=False)
    mine = f"train-{os.getpid()}"
    assert all(p.name.lstrip(".").startswith(mine) for p in folder.iterdir())  # the dead owner's files are gone
    assert source.bin_path.exists()
