"""Decode once: images and masks read at (just above) the training size, kept in RAM or on disk.

Every epoch used to decode the same full-size JPEGs again and then throw most pixels away in
the resize to the training size. Here each pair is read once by :func:`load_pair`, which

- decodes a JPEG straight at 1/2, 1/4 or 1/8 scale when it is at least twice the size needed
  (Pillow's ``draft``; the truncated-file check stays, see :mod:`nailseg.core.data.decode`);
- downscales image and mask to the same size, the longer side ``cache_scale`` x the training
  side (area interpolation; the mask is stored binary), so random crops and scale augmentation
  still have pixels to work with.

Uncached loading goes through the same :func:`load_pair`, so a cached batch and an uncached one
are identical. The cache stores one split in one flat file (``.bin``) that every DataLoader
worker or tf.data thread maps read-only: the pages are shared, never copied per worker. A JSON
manifest, written last and atomically, makes the ``.bin`` valid; a crash while writing leaves a
``.bin`` with no manifest, which is never read. Each entry's key hashes the image and mask paths,
sizes and mtimes and the cache size, so a changed file is decoded again (the unchanged ones are
copied from the previous cache).

``ram`` keeps the files in shared memory (``/dev/shm``) and removes them when the process that
made them exits (or, when it was killed, the next process that makes a RAM cache does); ``disk``
keeps them in the run folder (or ``data.cache_dir``) for later runs.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nailseg.core.data.decode import decode_scaled, image_size
from nailseg.specs import PIPELINE_SPECS
from nailseg.core.data.discover import Pair
from nailseg.core.io import atomic_path, pid_alive, write_json
from nailseg.errors import ConfigError, DataError

CACHE_MODES = ("none", "ram", "disk", "auto")
CACHE_VERSION = 1
SHM = Path("/dev/shm")


def target_size(width: int, height: int, longest: int | None) -> tuple[int, int]:
    """(width, height) with the longer side at most ``longest``; never upscaled."""
    if longest is None or max(width, height) <= longest:
        return width, height
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def cache_longest_side(size_hw: tuple[int, int], cache_scale: float) -> int:
    return int(round(max(size_hw) * cache_scale))


def load_pair(pair: Pair, longest: int | None, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) ``uint8`` and mask (H, W) ``uint8`` in {0, 1} (class indices when ``labels``,
    a :class:`~nailseg.core.labels.LabelSpec`, is given), the longer side at most ``longest``: what
    both the cache and uncached loading hand to augmentation."""
    import cv2

    size = image_size(pair.image)
    if image_size(pair.mask) != size:
        raise DataError(f"{pair.mask}: mask is {image_size(pair.mask)[0]}x{image_size(pair.mask)[1]} but its image "
                        f"{pair.image} is {size[0]}x{size[1]}")
    w, h = target_size(*size, longest)
    image = decode_scaled(pair.image, "image", longest)
    mask = decode_scaled(pair.mask, "mask", longest, labels)
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    if mask.shape != (h, w) and labels is not None:  # class indices: nearest, never blended
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
    elif mask.shape != (h, w):
        mask = (cv2.resize(mask * np.uint8(255), (w, h), interpolation=cv2.INTER_AREA) > 127).astype(np.uint8)
    return np.ascontiguousarray(image), mask


class FileSource:
    """Uncached: each access decodes the pair again (the path every pipeline had before)."""

    def __init__(self, pairs: list[Pair], longest: int | None, labels=None):
        self.pairs, self.longest, self.labels = pairs, longest, labels

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return load_pair(self.pairs[index], self.longest, self.labels)


def _file_id(path: Path) -> list:
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def entry_key(pair: Pair, longest: int | None, labels=None) -> str:
    parts = [CACHE_VERSION, _file_id(pair.image), _file_id(pair.mask), longest]
    if labels is not None:  # class indices and binary masks of one file are different entries
        parts.append([labels.n, labels.ignore_index, labels.colors])
    payload = json.dumps(parts)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclass
class _Entry:
    key: str
    offset: int   # image bytes start here; the mask's h*w bytes follow them
    height: int
    width: int

    @property
    def nbytes(self) -> int:
        return self.height * self.width * 4


class DecodeCache:
    """A split's decoded pairs in one read-only memory-mapped file (see the module docstring).

    Pickles as its paths, so a spawned worker maps the same file instead of receiving a copy.
    """

    def __init__(self, bin_path: Path, entries: list[_Entry]):
        self.bin_path = Path(bin_path)
        self.entries = entries
        self._map: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict:
        return {"bin_path": self.bin_path, "entries": self.entries, "_map": None}

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def _mapped(self) -> np.memmap:
        if self._map is None:
            self._map = np.memmap(self.bin_path, dtype=np.uint8, mode="r")
        return self._map

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        e = self.entries[index]
        buf = self._mapped()
        n = e.height * e.width
        image = np.array(buf[e.offset:e.offset + 3 * n]).reshape(e.height, e.width, 3)
        mask = np.array(buf[e.offset + 3 * n:e.offset + 4 * n]).reshape(e.height, e.width)
        return image, mask


# ---- building ----------------------------------------------------------------------------------

def estimate_bytes(pairs: list[Pair], longest: int | None) -> int:
    """The cache's size from the image headers alone (no decoding)."""
    total = 0
    for p in pairs:
        w, h = target_size(*image_size(p.image), longest)
        total += w * h * 4
    return total


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def resolve_mode(mode: str, pairs: list[Pair], longest: int | None, ram_share: float) -> str:
    """``auto`` -> ``ram`` when the decoded set fits in ``ram_share`` of free memory and in
    ``/dev/shm``, else ``none``. An explicit ``ram`` that cannot fit is refused with the figures."""
    if mode in ("none", "disk"):
        return mode
    need = estimate_bytes(pairs, longest)
    room = int(_available_memory() * ram_share)
    shm_free = shutil.disk_usage(SHM).free if SHM.is_dir() else 0
    fits = need <= room and need <= shm_free
    if mode == "auto":
        return "ram" if fits else "none"
    if not fits:
        raise ConfigError(f"data.cache: ram needs {need / 2**20:.0f} MB but {room / 2**20:.0f} MB of memory "
                          f"(data.cache_ram_share {ram_share}) and {shm_free / 2**20:.0f} MB of /dev/shm are free; "
                          "use data.cache: disk or none")
    return mode


def ram_cache_dir() -> Path:
    base = SHM if SHM.is_dir() else Path(tempfile.gettempdir())
    return base / f"nailseg-cache-{os.getuid()}"


def open_cache(pairs: list[Pair], longest: int | None, folder: Path, name: str, *, progress: bool = True,
               threads: int | None = None, remove_at_exit: bool = False, labels=None) -> DecodeCache:
    """The cache of ``pairs`` under ``folder`` as ``NAME-<hash>.bin/.json``: opened when a valid one
    exists, else built (unchanged entries of an older cache of the same name are copied, the rest
    decoded). Two processes building the same cache (DDP ranks) take turns on a lock."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keys = [entry_key(p, longest, labels) for p in pairs]
    digest = hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]
    stem = f"{name}-{digest}"
    bin_path, manifest = folder / f"{stem}.bin", folder / f"{stem}.json"
    with open(folder / f".{name}.lock", "a+", encoding="utf-8") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        cache = _read_valid(bin_path, manifest, keys)
        if cache is None:
            old = _previous(folder, name, exclude=stem)
            cache = _build(pairs, keys, longest, bin_path, manifest, old, progress=progress, threads=threads,
                           labels=labels)
            for stale in folder.glob(f"{name}-*"):
                if not stale.name.startswith(stem):
                    stale.unlink(missing_ok=True)
    if remove_at_exit:
        _remove_at_exit(bin_path, manifest, folder / f".{name}.lock")
    return cache


def _read_valid(bin_path: Path, manifest: Path, keys: list[str]) -> DecodeCache | None:
    """The cache when its manifest exists, names exactly ``keys``, and the ``.bin`` has its size."""
    try:
        meta = json.loads(manifest.read_text())
        entries = [_Entry(**e) for e in meta["entries"]]
        if meta.get("version") != CACHE_VERSION or [e.key for e in entries] != keys:
            return None
        if bin_path.stat().st_size != meta["nbytes"] or sum(e.nbytes for e in entries) != meta["nbytes"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return DecodeCache(bin_path, entries)


def _previous(folder: Path, name: str, exclude: str) -> DecodeCache | None:
    """The newest valid older cache of this split, whose unchanged entries can be copied."""
    candidates = sorted(folder.glob(f"{name}-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for manifest in candidates:
        if manifest.stem == exclude:
            continue
        try:
            meta = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        cache = _read_valid(manifest.with_suffix(".bin"), manifest, [e["key"] for e in meta.get("entries", [])])
        if cache is not None:
            return cache
    return None


def _build(pairs, keys, longest, bin_path: Path, manifest: Path, old: DecodeCache | None, *, progress: bool,
           threads: int | None, labels=None) -> DecodeCache:
    from tqdm import tqdm

    from nailseg.core.progress import interactive

    reuse = {e.key: i for i, e in enumerate(old.entries)} if old is not None else {}

    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        if keys[i] in reuse:
            return old[reuse[keys[i]]]
        return load_pair(pairs[i], longest, labels)

    manifest.unlink(missing_ok=True)  # from here until the new manifest lands, the cache is invalid
    entries, offset = [], 0
    workers = threads or min(8, os.cpu_count() or 1)
    with atomic_path(bin_path) as tmp, open(tmp, "wb") as fh, ThreadPoolExecutor(workers) as pool:
        # threads suffice: Pillow and OpenCV release the GIL while decoding and resizing
        # a bar on a terminal only: a log gets nothing per image
        bar = tqdm(total=len(pairs), desc=f"caching {len(pairs)} images", unit="img",
                   disable=not progress or not interactive(), leave=False)
        for i, (image, mask) in enumerate(pool.map(load, range(len(pairs)))):
            h, w = mask.shape
            fh.write(image.tobytes())
            fh.write(mask.astype(np.uint8).tobytes())
            entries.append(_Entry(keys[i], offset, h, w))
            offset += 4 * h * w
            bar.update()
        bar.close()
        fh.flush()
    write_json(manifest, {"version": CACHE_VERSION, "longest_side": longest, "nbytes": offset,
                          "entries": [e.__dict__ for e in entries]})
    return DecodeCache(bin_path, entries)


def _remove_at_exit(*paths: Path) -> None:
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:  # never from a forked worker
            for p in paths:
                Path(p).unlink(missing_ok=True)

    atexit.register(remove)


_RAM_CACHE_FILE = re.compile(r"^\.?[a-z]+-(?P<pid>\d+)(?:-[0-9a-f]{16})?\.(?:bin|json|lock)$")


def remove_orphaned_ram_caches(folder: Path) -> list[Path]:
    """Remove the RAM caches (and their locks) of processes that are gone. Their owner removes
    them at exit, but a killed training never gets there, and ``/dev/shm`` is memory: without this
    every SIGKILL or OOM kill would keep a decoded copy of its data set until the next reboot."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _RAM_CACHE_FILE.match(entry.name)
        if match is None or int(match["pid"]) == os.getpid() or pid_alive(int(match["pid"])):
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def open_source(data, pairs: list[Pair], split: str, run_folder: Path | None, *, pipeline: str,
                progress: bool = True) -> FileSource | DecodeCache:
    """What a pipeline reads ``pairs`` from, as ``data`` (the config's ``DataConfig``) says:
    a :class:`DecodeCache` (``data.cache`` ram/disk, or auto when it fits) or a :class:`FileSource`.
    Both give identical pairs, downscaled to ``data.cache_scale`` x the training side."""
    longest = cache_longest_side(data.size_hw, data.cache_scale)
    mode = resolve_mode(data.cache, pairs, longest, data.cache_ram_share)
    if mode == "none" or not PIPELINE_SPECS[pipeline].reads_cache:
        return FileSource(pairs, longest, data.label_spec)
    if mode == "ram":
        remove_orphaned_ram_caches(ram_cache_dir())
        return open_cache(pairs, longest, ram_cache_dir(), f"{split}-{os.getpid()}", progress=progress,
                          remove_at_exit=True, labels=data.label_spec)
    folder = Path(data.cache_dir) if data.cache_dir else (Path(run_folder) / "cache" if run_folder else None)
    if folder is None:
        raise ConfigError("data.cache: disk needs a folder: set data.cache_dir")
    return open_cache(pairs, longest, folder, split, progress=progress, labels=data.label_spec)


