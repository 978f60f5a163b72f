"""A stack that needs nothing but numpy: logistic regression on each pixel's colour.

It lives in the tests, outside the package, and plugs in the way any third-party stack would:
``NAILSEG_STACKS=tests.stacks.numpy_stack`` makes nailseg import this module, which registers
its :class:`StackSpec` and its ``model.family: pixel``. Nothing outside this file names it, so
``tests/test_plugin_stack.py`` driving it through train, eval, predict, export, compare and resume
proves that a stack is one module plus one spec.

``NUMPY_STACK_EPOCH_SLEEP=S`` makes each epoch last at least S seconds, so the contract's SIGKILL
test (tests/contract.py) can catch a training that would otherwise end in milliseconds.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from nailseg.config import Experiment, ModelBase, register_family
from nailseg.core.data.decode import read_image, read_mask
from nailseg.core.data.discover import Pair
from nailseg.core.evaluate import Predictor
from nailseg.core.io import atomic_path
from nailseg.core.metrics import confusion, scores
from nailseg.runs import RunDir
from nailseg.core.runtime import lr_factor
from nailseg.contract import EpochRecord, FitResult, TrainContext
from nailseg.errors import ConfigError
from nailseg.specs import StackSpec, register_stack

SPEC = register_stack(StackSpec(
    "numpy", ("pixel",), ("albumentations",), extra="dev", requires=("numpy",), exports=("npz",),
    module_name=__name__, purpose="The numpy test stack (model.family: pixel)"))


@register_family
class PixelModel(ModelBase):
    """Logistic regression on (r, g, b) and their products: a colour rule learned from the masks."""

    family: Literal["pixel"]
    steps_per_epoch: int = 2


def features(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H*W, 10): colour, its squares and products, and a bias."""
    x = image.reshape(-1, 3).astype(np.float32) / 255.0
    r, g, b = x.T
    return np.stack([r, g, b, r * r, g * g, b * b, r * g, r * b, g * b, np.ones_like(r)], axis=1)


def _load_pairs(pairs: list[Pair], size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    h, w = size_hw
    xs, ys = [], []
    for pair in pairs:
        image = np.asarray(Image.fromarray(read_image(pair.image)).resize((w, h), Image.BILINEAR))
        mask = np.asarray(Image.fromarray(read_mask(pair.mask).astype(np.uint8)).resize((w, h), Image.NEAREST))
        xs.append(features(image))
        ys.append(mask.reshape(-1).astype(np.float32))
    return np.concatenate(xs), np.concatenate(ys)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _save(path: Path, **state) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **state)


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            state = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as err:
        raise ConfigError(f"{path}: not a numpy-stack checkpoint ({err})") from None
    if "w" not in state or state["w"].shape != (10,):
        raise ConfigError(f"{path}: not a numpy-stack checkpoint (no weights of shape (10,))")
    return state


class NumpyStack:
    spec = SPEC

    def preflight(self, exp: Experiment) -> None:
        if exp.trainer.accelerator in ("gpu", "cuda"):
            raise ConfigError("trainer.accelerator: the numpy stack runs on the CPU only")

    def resumable(self, run: RunDir) -> Path | None:
        if not run.last_checkpoint.exists():
            return None
        _load(run.last_checkpoint)
        return run.last_checkpoint

    def fit(self, ctx: TrainContext) -> FitResult:
        exp, run = ctx.exp, ctx.run
        x, y = _load_pairs(ctx.train_pairs, exp.data.size_hw)
        vx, vy = _load_pairs(ctx.val_pairs, exp.data.size_hw)
        w, start, best, step = np.zeros(10, np.float32), 0, -1.0, 0
        if ctx.resume:
            state = _load(run.last_checkpoint)
            w, start, best, step = state["w"], int(state["epoch"]) + 1, float(state["best_iou"]), int(state["step"])
        weight = np.ones_like(y)  # the plain log-likelihood: its 0.5 threshold is the Bayes rule
        fit_started = time.perf_counter()
        sleep = float(os.environ.get("NUMPY_STACK_EPOCH_SLEEP", "0"))
        ctx.recover_epoch(start)  # a line staged before a kill: kept if its checkpoint was written
        for epoch in range(start, exp.trainer.max_epochs):
            t0 = time.perf_counter()
            lr = exp.optim.lr * lr_factor(epoch, exp.trainer.max_epochs, exp.optim.warmup_epochs, exp.optim.scheduler)
            for _ in range(exp.model.steps_per_epoch):  # damped Newton steps (10 weights: a 10x10 solve)
                p = _sigmoid(x @ w)
                grad = x.T @ ((p - y) * weight) / len(y)
                hessian = (x * (weight * p * (1 - p))[:, None]).T @ x / len(y) + 1e-4 * np.eye(10)
                w = w - min(1.0, lr * 1000.0) * np.linalg.solve(hessian, grad)  # lr 1e-3 -> full steps
                step += 1
            time.sleep(sleep)
            train_time = time.perf_counter() - t0
            vp = _sigmoid(vx @ w)
            c = confusion(vp >= 0.5, vy > 0)
            val = scores(c.tp, c.fp, c.fn, c.tn)
            ctx.stage_epoch(EpochRecord(  # the line waits for its checkpoint (contract.TrainContext)
                epoch=epoch, step=step, train_loss=_loss(_sigmoid(x @ w), y), val_loss=_loss(vp, vy),
                val_iou=val["iou"], val_dice=val["dice"], lr=lr,
                images_per_s=len(ctx.train_pairs) * exp.model.steps_per_epoch / max(train_time, 1e-9),
                epoch_time_s=time.perf_counter() - t0))
            _save(run.last_checkpoint, w=w, epoch=epoch, step=step, best_iou=max(best, val["iou"]))
            if val["iou"] > best:
                best = val["iou"]
                _save(run.best_checkpoint, w=w, epoch=epoch, step=step, best_iou=best)
            ctx.commit_epoch()
        return FitResult(epochs=exp.trainer.max_epochs, global_step=step,
                         fit_time_s=time.perf_counter() - fit_started, precision="32", parameters=10, device="cpu",
                         versions={"numpy": np.__version__})

    def load_predictor(self, run: RunDir, exp: Experiment, checkpoint: str = "best") -> Predictor:
        path = run.best_checkpoint if checkpoint == "best" and run.best_checkpoint.exists() else run.last_checkpoint
        if not path.exists():
            raise ConfigError(f"{run.path}: no checkpoint (training never finished an epoch)")
        w = _load(path)["w"]

        def predict(image: np.ndarray) -> np.ndarray:
            return _sigmoid(features(image) @ w).reshape(image.shape[:2]).astype(np.float32)

        return predict

    def export(self, run: RunDir, exp: Experiment, fmt: str, out: Path | None) -> Path:
        if fmt not in self.spec.exports:
            raise ConfigError(f"--format {fmt}: the numpy stack writes only {', '.join(self.spec.exports)}")
        out = Path(out or run.path / "model.npz")
        _save(out, w=_load(run.best_checkpoint if run.best_checkpoint.exists() else run.last_checkpoint)["w"])
        return out


STACK = NumpyStack()
