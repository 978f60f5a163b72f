"""Shared fixtures: tiny synthetic data sets, the real nails pairs when present, CLI runners."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nailseg.core.data.synth import SynthConfig, synthesize
from nailseg.forked_cli import SERVER_ENV
from tests.cli_fork import run_forked
from tests.schedule import longest_groups_first

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("NAILSEG_REAL_DATA", REPO.parent / "shared" / "data" / "nails_segmentation"))
CAMVID = Path(os.environ.get("NAILSEG_CAMVID", REPO.parent / "shared" / "data" / "camvid_small"))

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub: fail at once instead of waiting on the network


def _has_gpu() -> bool:
    """Without importing a framework: the TensorFlow tests run in a process that must not load torch."""
    import shutil

    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


# Modules whose tests share nothing costly, so pytest-xdist may spread them over its workers; every
# other module's tests stay together on one worker (``--dist loadgroup``), so a module-scoped
# fixture (a trained run) is built once, not once per worker.
SPREAD_MODULES = {"test_notebooks.py", "test_layers.py", "test_config.py"}
# Packages whose modules share a package-scoped trained run (tests/deploy: ``onnx_run``): one group for
# the whole package, so the run is trained once rather than once on each worker that draws a module.
GROUPED_PACKAGES = {REPO / "tests" / "deploy"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    has_gpu = _has_gpu()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if item.path.name not in SPREAD_MODULES and not any(m.name == "xdist_group" for m in item.iter_markers()):
            group = item.path.parent if item.path.parent in GROUPED_PACKAGES else item.path
            item.add_marker(pytest.mark.xdist_group(str(group.relative_to(REPO))))
    items[:] = longest_groups_first(items, _xdist_scope)


def _xdist_scope(item) -> str:
    """What pytest-xdist's loadgroup keeps on one worker: the item's group, else the item alone."""
    marker = item.get_closest_marker("xdist_group")
    return marker.args[0] if marker and marker.args else item.nodeid


def pytest_configure(config):
    # xdist would reorder the groups by their number of tests; tests/schedule.py orders them by time
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


@pytest.hookimpl(trylast=True)  # after pytest-xdist has tagged the grouped tests (in a worker)
def pytest_collection_finish(session):
    """A worker whose grouped tests lost their group trains every module's shared runs once per
    worker, and silently: pytest-xdist marks a group by appending ``@group`` to the node id, which
    pytest 9.2 no longer lets it do (constraints.txt pins pytest below it). Stop at once instead."""
    grouped = [i for i in session.items if i.get_closest_marker("xdist_group")]
    if getattr(session.config.option, "loadgroup", False) and grouped and not any("@" in i.nodeid for i in grouped):
        raise pytest.UsageError("--dist loadgroup: no test carries its xdist group (pytest-xdist cannot tag node ids "
                                "with this pytest; install the versions in constraints.txt)")


@contextmanager
def scratch(tmp_path_factory, name: str) -> Iterator[Path]:
    """A folder for a module- or package-scoped fixture, removed when its tests are done.

    ``tmp_path_retention_policy = "failed"`` removes a passing test's ``tmp_path`` at once, but a
    wider fixture's ``mktemp`` folder stays until the session ends. A tiny trained run holds two
    checkpoints of about 170 MB, so a session that kept every module's runs filled CI's disk.
    In a fixture: ``with scratch(tmp_path_factory, "runs") as runs: ...; yield run``."""
    path = tmp_path_factory.mktemp(name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """32 synthetic pairs at 96x72: small enough for one-epoch CPU trainings."""
    root = tmp_path_factory.mktemp("synth") / "data"
    synthesize(root, SynthConfig(n=32, seed=7, width=96, height=72), progress=False)
    return root


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "images").is_dir():
        pytest.skip(f"real nails pairs not found at {REAL_DATA}")
    return REAL_DATA


def write_image(path: Path, array: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def make_pair_folder(root: Path, n: int = 3, size=(40, 30), mask_dir: str = "labels",
                     mask_suffix: str = ".png") -> Path:
    """A hand-made folder of random images with rectangle masks."""
    rng = np.random.default_rng(0)
    w, h = size
    for i in range(n):
        write_image(root / "images" / f"img{i}.jpg", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        mask = np.zeros((h, w), np.uint8)
        mask[5:15, 5 + i : 20 + i] = 255
        write_image(root / mask_dir / f"img{i}{mask_suffix}", mask)
    return root


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600,
            check: bool = False, fresh: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``nailseg`` command in a process of its own.

    By default the process is forked from a warm fork server (``tests/cli_fork.py``) that has
    ``FORK_KIND``'s framework loaded, which saves the ~10 s of imports a fresh interpreter pays.
    ``fresh=True`` starts a new interpreter: needed for the other framework (torch and TensorFlow
    never share a process) and for variables that libraries read at import time (a forked child
    sees ``env`` only from the moment it starts)."""
    full_env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop(SERVER_ENV, None)
    if fresh:
        proc = subprocess.run([sys.executable, "-m", "nailseg.cli", *args], cwd=cwd, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
    else:
        proc = run_forked(list(args), cwd, full_env, timeout, kind=FORK_KIND)
    if check and proc.returncode != 0:
        raise AssertionError(f"nailseg {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


FORK_KIND = "torch"  # the TensorFlow tests' conftest sets "tensorflow" for their own process


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory) -> Path:
    """24 pairs whose nails differ from the skin by colour (with noise on both), so a colour rule can
    learn them: the answer is known, and a fit that learns nothing cannot reach it."""
    root = tmp_path_factory.mktemp("colour") / "data"
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:72, :96]
    for i in range(24):
        mask = np.zeros((72, 96), bool)
        for _ in range(rng.integers(2, 5)):
            cy, cx, ry, rx = rng.integers(10, 62), rng.integers(10, 86), rng.integers(4, 10), rng.integers(3, 8)
            mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        skin = rng.uniform([170, 120, 100], [230, 170, 140])
        image = np.where(mask[..., None], [225, 70, 110], skin) + rng.normal(0, 12, (72, 96, 3))
        write_image(root / "images" / f"{i:02d}.png", np.clip(image, 0, 255).astype(np.uint8))
        write_image(root / "labels" / f"{i:02d}.png", mask.astype(np.uint8) * 255)
    return root


TINY_TRAIN = [  # overrides that make any smp config train in seconds on a CPU
    "data.image_size=64", "model.encoder=resnet18", "trainer.batch_size=4", "data.num_workers=0",
    "logging.predictions=2",
]


CLASS_NAMES = ("skin", "nail", "ring")


@pytest.fixture(scope="session")
def class_data(tmp_path_factory) -> Path:
    """24 pairs of three classes told apart by colour (pink nails, blue rings on noisy skin), with a
    band of unlabelled pixels (255) in each mask: a many-class model that learns nothing scores
    about 0.3 mIoU (skin alone), one that learns the colours far more."""
    root = tmp_path_factory.mktemp("classes") / "data"
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:72, :96]
    for i in range(24):
        labels = np.zeros((72, 96), np.uint8)
        for cls in (1, 2, 1):
            cy, cx, ry, rx = rng.integers(10, 62), rng.integers(10, 86), rng.integers(5, 11), rng.integers(4, 9)
            labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = cls
        skin = rng.uniform([170, 120, 100], [230, 170, 140])
        colours = np.array([skin, [225, 70, 110], [60, 90, 220]])
        image = colours[labels] + rng.normal(0, 12, (72, 96, 3))
        labels[:, 90:] = 255  # nobody labelled this band
        write_image(root / "images" / f"{i:02d}.png", np.clip(image, 0, 255).astype(np.uint8))
        write_image(root / "labels" / f"{i:02d}.png", labels)
    (root / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return root
