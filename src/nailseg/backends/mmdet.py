"""MMDetection Mask R-CNN through mmengine's Runner: the ``mmdet`` backend (instance segmentation).

Same data folder, check and split as the semantic backends. The split's masks become COCO
instance files (``nailseg.data.coco``) in the run folder; the mmdet config is generated from
the typed config (``models/mmdet_config.py``). Besides COCO bbox/segm mAP, the union of the
predicted instances is scored against the mask with the shared metrics, so instance and
semantic models can be compared.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from nailseg import __version__
from nailseg._tensorboard import use_tensorboard_without_tensorflow
from nailseg.data.coco import image_ids, to_coco, write_coco
from nailseg.data.decode import read_image
from nailseg.data.discover import Pair, find_pairs
from nailseg.errors import ConfigError
from nailseg.evaluate import Predictor, evaluate_pairs, write_overlays
from nailseg.experiment import Experiment
from nailseg.io import append_jsonl, atomic_path, read_jsonl, write_json, write_text
from nailseg.models.mmdet_config import build_mmdet_config
from nailseg.runs import RunDir, dedupe_metrics, global_rank, prepare_run, wait_for_split

use_tensorboard_without_tensorflow()
SCORE_THRESHOLD = 0.5  # instances kept for overlays, counts and the union mask


def _launcher() -> str:
    return "pytorch" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else "none"


@contextlib.contextmanager
def trusted_checkpoint_loading(run: RunDir):
    """Let mmengine read *this run's own* checkpoints with ``weights_only=False``.

    mmengine calls ``torch.load`` without ``weights_only``; torch >= 2.6 then refuses its
    checkpoints (they hold the message hub and other Python objects). Only files inside the
    run's mmdet work folder, which this tool wrote, are read that way, and only inside this
    block; every other ``torch.load`` keeps torch's safe default.
    """
    original = torch.load
    trusted_root = (run.path / "mmdet").resolve()

    def load(f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and Path(f).resolve().is_relative_to(trusted_root):
            kwargs.setdefault("weights_only", False)
        return original(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def _write_coco_splits(exp: Experiment, run: RunDir, split: dict, pairs: list[Pair]) -> dict[str, Path]:
    by_key = {p.key: p for p in pairs}
    ids = image_ids(pairs)
    files = {}
    for name in ("train", "val", "test"):
        chosen = [by_key[k] for k in split[name]] or [by_key[k] for k in split["train"]]
        coco, _ = to_coco(chosen, ids, min_area=exp.model.min_area)
        files[name] = (run.path / "coco" / f"{name}.json").resolve()  # mmdet joins relative paths to data_root
        if global_rank() == 0:
            write_coco(files[name], coco)
    return files


def _recorder_hook(run: RunDir, iters_per_epoch: int, batch_size: int):
    from mmengine.hooks import Hook

    class RunRecorder(Hook):
        """One ``metrics.jsonl`` line per validation round (an 'epoch' of the iteration loop)."""

        priority = "LOW"

        def __init__(self):
            self.losses: list[float] = []
            self.t0 = time.perf_counter()
            self.train_time = 0.0

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            self._iter_start = time.perf_counter()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            self.train_time += time.perf_counter() - self._iter_start
            if outputs and "loss" in outputs:
                self.losses.append(float(outputs["loss"]))

        def after_val_epoch(self, runner, metrics=None):
            if runner.rank != 0:
                return
            metrics = metrics or {}
            now = time.perf_counter()
            iters = max(1, len(self.losses))
            append_jsonl(run.metrics, {
                "epoch": runner.iter // iters_per_epoch - 1, "step": runner.iter,
                "train_loss": float(np.mean(self.losses)) if self.losses else None,
                "val_segm_map": metrics.get("coco/segm_mAP"), "val_bbox_map": metrics.get("coco/bbox_mAP"),
                "val_segm_map_50": metrics.get("coco/segm_mAP_50"), "val_bbox_map_50": metrics.get("coco/bbox_mAP_50"),
                "lr": float(runner.optim_wrapper.get_lr()["lr"][0]),
                "images_per_s": iters * batch_size * runner.world_size / self.train_time if self.train_time else None,
                "epoch_time_s": now - self.t0,
            })
            self.losses, self.t0, self.train_time = [], now, 0.0

    return RunRecorder()


def train(exp: Experiment, run: RunDir, *, resume: bool = False) -> dict | None:
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.runner import Runner

    register_all_modules(init_default_scope=True)
    started = time.time()
    rank_zero = global_rank() == 0
    split = prepare_run(exp, run, resume=resume)[0] if rank_zero else wait_for_split(run)
    pairs, _ = find_pairs(exp.data.root)
    ann_files = _write_coco_splits(exp, run, split, pairs)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    iters_per_epoch = max(1, math.ceil(len(split["train"]) / (exp.trainer.batch_size * world)))
    if isinstance(exp.trainer.limit_train_batches, int):
        iters_per_epoch = min(iters_per_epoch, exp.trainer.limit_train_batches)
    on_gpu = torch.cuda.is_available() and exp.trainer.accelerator != "cpu"
    images_dir = Path(str(pairs[0].image)[: -len(pairs[0].key)]).resolve()  # keys are relative to images/
    cfg_dict = build_mmdet_config(exp, work_dir=(run.path / "mmdet").resolve(), images_dir=images_dir, ann_files=ann_files,
                                  iters_per_epoch=iters_per_epoch, on_gpu=on_gpu, launcher=_launcher())
    if resume:
        if not (run.path / "mmdet" / "last_checkpoint").exists():
            raise ConfigError(f"{run.path}: nothing to resume (no mmdet checkpoint yet); start a new run")
        cfg_dict["resume"] = True
    if cfg_dict["launcher"] == "pytorch" and not on_gpu:
        # mmengine's torchrun launcher assumes CUDA; on CPUs join a gloo group first (mmengine then
        # skips its own init) and build DDP without device ids.
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")
        cfg_dict["model_wrapper_cfg"] = dict(type="MMDistributedDataParallel", device_ids=None,
                                             broadcast_buffers=False)
    cfg = Config(cfg_dict)
    if rank_zero:
        write_text(run.path / "mmdet_config.py", cfg.pretty_text)
        write_json(run.path / "mmdet_config.json", cfg_dict)
        if resume:
            dedupe_metrics(run)
    runner = Runner.from_cfg(cfg)
    runner.register_hook(_recorder_hook(run, iters_per_epoch, exp.trainer.batch_size), priority="LOW")
    fit_started = time.perf_counter()
    with trusted_checkpoint_loading(run):
        runner.train()
    fit_time = time.perf_counter() - fit_started
    if runner.rank != 0:
        return None
    dedupe_metrics(run)
    _export_weights(run)
    return _finish(exp, run, split, pairs, started, fit_time, on_gpu)


def _export_weights(run: RunDir) -> None:
    """Plain state dicts for inference (``checkpoints/best.pth``, ``last.pth``): they load with weights_only=True."""
    work = run.path / "mmdet"
    last = (work / "last_checkpoint").read_text().strip()
    best = sorted(work.glob("best_coco_segm_mAP_iter_*.pth"))
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    with trusted_checkpoint_loading(run):
        for name, source in (("last.pth", Path(last)), ("best.pth", best[-1] if best else Path(last))):
            state = torch.load(source, map_location="cpu")["state_dict"]
            with atomic_path(run.checkpoints / name) as tmp:
                torch.save(state, tmp)


def _finish(exp, run, split, pairs, started, fit_time, on_gpu) -> dict:
    import mmcv
    import mmdet
    import mmengine

    by_key = {p.key: p for p in pairs}
    val_pairs = [by_key[k] for k in split["val"]] or [by_key[k] for k in split["train"]]
    instances = load_instance_predictor(run, exp)
    union = union_predictor(instances)
    val = evaluate_pairs(union, val_pairs, progress=False)
    coco = evaluate_coco(instances, val_pairs, pairs, exp.model.min_area)
    write_overlays(union, val_pairs[: exp.logging.predictions], run.predictions)
    records = read_jsonl(run.metrics)
    speeds = [r["images_per_s"] for r in records if r.get("images_per_s")]
    summary = {
        "backend": "mmdet", "run": str(run.path),
        "val_segm_map": coco["segm_mAP"], "val_bbox_map": coco["bbox_mAP"],
        "val_segm_map_50": coco["segm_mAP_50"], "val_bbox_map_50": coco["bbox_mAP_50"],
        "val_iou": val["iou"], "val_dice": val["dice"],
        "val_metrics_at": "original resolution, best checkpoint; IoU/Dice of the union of instances scoring >= 0.5",
        "epochs": len(records), "global_step": records[-1]["step"] if records else 0,
        "train_images_per_s": float(np.median(speeds)) if speeds else None,
        "fit_time_s": fit_time, "wall_time_s": time.time() - started,
        "precision": "amp" if on_gpu else "32-true",
        "device": torch.cuda.get_device_name(0) if on_gpu else f"cpu ({platform.machine()}, {os.cpu_count()} cores)",
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "versions": {"nailseg": __version__, "torch": torch.__version__, "mmdet": mmdet.__version__,
                     "mmcv": mmcv.__version__, "mmengine": mmengine.__version__, "python": platform.python_version()},
    }
    write_json(run.summary, summary)
    return summary


def load_model(run: RunDir, exp: Experiment, device: str | None = None):
    from mmdet.apis import init_detector
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules(init_default_scope=True)
    config_path = run.path / "mmdet_config.json"
    if not config_path.exists():
        raise ConfigError(f"{run.path}: no mmdet_config.json (did training start?)")
    cfg = Config(_restore_tuples(json.loads(config_path.read_text())))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "checkpoint is None, use COCO classes": ours are set next
        model = init_detector(cfg, checkpoint=None, device=device)
    model.dataset_meta = {"classes": ("nail",), "palette": [(220, 20, 60)]}
    weights = run.checkpoints / "best.pth"
    if not weights.exists():
        weights = run.checkpoints / "last.pth"
    if not weights.exists():
        raise ConfigError(f"{run.path}: no exported weights in {run.checkpoints} (did training finish?)")
    model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
    return model.eval()


def _restore_tuples(obj, key: str | None = None):
    """JSON turned the config's tuples into lists; mmcv insists on tuples for these keys."""
    if isinstance(obj, dict):
        return {k: _restore_tuples(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        items = [_restore_tuples(v) for v in obj]
        return tuple(items) if key in ("scale", "out_indices", "meta_keys", "classes") else items
    return obj


def load_instance_predictor(run: RunDir, exp: Experiment):
    """RGB image -> (masks bool (K, H, W), scores (K,)) at the image's own size."""
    from mmdet.apis import inference_detector

    model = load_model(run, exp)

    def predict(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = inference_detector(model, np.ascontiguousarray(image[..., ::-1]))  # mmdet reads BGR
        inst = result.pred_instances
        masks = inst.masks.cpu().numpy().astype(bool) if len(inst) else np.zeros((0, *image.shape[:2]), bool)
        return masks, inst.scores.cpu().numpy()

    return predict


def union_predictor(instances) -> Predictor:
    def predict(image: np.ndarray) -> np.ndarray:
        masks, scores = instances(image)
        keep = masks[scores >= SCORE_THRESHOLD]
        return keep.any(axis=0).astype(np.float32) if len(keep) else np.zeros(image.shape[:2], np.float32)

    return predict


def load_predictor(run: RunDir, exp: Experiment) -> Predictor:
    return union_predictor(load_instance_predictor(run, exp))


def evaluate_coco(instances, chosen: list[Pair], all_pairs: list[Pair], min_area: int) -> dict:
    """COCO bbox and segm mAP (all, @50, @75) of the instance predictor on ``chosen``."""
    import contextlib as _ctx
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from nailseg.data.coco import encode_rle

    ids = image_ids(all_pairs)
    gt_dict, _ = to_coco(chosen, ids, min_area=min_area)
    results = []
    for pair in chosen:
        masks, scores = instances(read_image(pair.image))
        for m, s in zip(masks, scores):
            if not m.any():
                continue
            ys, xs = np.nonzero(m)
            results.append({"image_id": ids[pair.key], "category_id": 1, "segmentation": encode_rle(m),
                            "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                     float(ys.max() - ys.min() + 1)], "score": float(s)})
    out = {}
    with _ctx.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_dict
        gt.createIndex()
        for kind in ("bbox", "segm"):
            if not results or not gt_dict["annotations"]:
                out.update({f"{kind}_mAP": 0.0, f"{kind}_mAP_50": 0.0, f"{kind}_mAP_75": 0.0})
                continue
            dt = gt.loadRes(results)
            ev = COCOeval(gt, dt, kind)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            out.update({f"{kind}_mAP": max(0.0, float(ev.stats[0])), f"{kind}_mAP_50": max(0.0, float(ev.stats[1])),
                        f"{kind}_mAP_75": max(0.0, float(ev.stats[2]))})
    out["instances_predicted"] = len(results)
    out["instances_true"] = len(gt_dict["annotations"])
    return out


def evaluate_instances(run: RunDir, exp: Experiment, chosen: list[Pair], all_pairs: list[Pair]) -> dict:
    return evaluate_coco(load_instance_predictor(run, exp), chosen, all_pairs, exp.model.min_area)


def export(run: RunDir, exp: Experiment, fmt: str, out: Path | None = None) -> Path:
    """``state_dict``: the plain inference weights (loadable with weights_only=True) plus the mmdet config."""
    if fmt != "state_dict":
        raise ConfigError(f"--format {fmt}: the mmdet backend exports state_dict")
    out = Path(out or run.path / "export")
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(run, exp, device="cpu")
    with atomic_path(out / "model.pth") as tmp:
        torch.save(model.state_dict(), tmp)
    write_text(out / "mmdet_config.py", (run.path / "mmdet_config.py").read_text())
    return out
