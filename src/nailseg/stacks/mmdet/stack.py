"""MMDetection Mask R-CNN through mmengine's Runner: the ``mmdet`` stack (instance segmentation).

Same data folder, check and split as the semantic stacks. The split's masks become COCO
instance files (``nailseg.core.data.coco``) in the run folder; the mmdet config is generated from
the typed config (``stacks/mmdet/config.py``). Besides COCO bbox/segm mAP, the union of the
predicted instances is scored against the mask with the shared metrics, so instance and
semantic models can be compared.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from nailseg import __version__
from nailseg.config import Experiment
from nailseg.core.data.coco import image_ids, to_coco, write_coco
from nailseg.core.data.decode import read_image
from nailseg.core.data.discover import Pair
from nailseg.core.evaluate import Predictor
from nailseg.core.io import atomic_path, read_jsonl, write_json, write_text
from nailseg.runs import RunDir, load_with_fallback
from nailseg.core.runtime import global_rank, resolve_accelerator, world_size
from nailseg.contract import FitResult, TrainContext
from nailseg.errors import ConfigError
from nailseg.specs import STACKS
from nailseg.stacks._torch.tensorboard import use_tensorboard_without_tensorflow
from nailseg.stacks._torch.checkpoints import safe_load
from nailseg.stacks.mmdet.checkpoints import load_mmengine_checkpoint, mmengine_safe_loading
from nailseg.stacks.mmdet.config import build_mmdet_config, instance_classes, model_config
from nailseg.stacks.mmdet.hooks import budget_hook, recorder_hook, resume_hook

use_tensorboard_without_tensorflow()


def _launcher() -> str:
    return "pytorch" if world_size() > 1 else "none"


def _write_coco_splits(exp: Experiment, run: RunDir, split_pairs: dict[str, list[Pair]]) -> dict[str, Path]:
    ids = image_ids([p for part in split_pairs.values() for p in part])
    files = {}
    for name in ("train", "val", "test"):
        chosen = split_pairs[name] or split_pairs["train"]
        coco, _ = to_coco(chosen, ids, min_area=exp.model.min_area, labels=exp.data.label_spec)
        files[name] = (run.path / "coco" / f"{name}.json").resolve()  # mmdet joins relative paths to data_root
        if global_rank() == 0:
            write_coco(files[name], coco)
    return files


class MmdetStack:
    spec = STACKS["mmdet"]

    def preflight(self, exp: Experiment) -> None:
        if exp.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={exp.trainer.accelerator}: no CUDA GPU on this machine")
        encoder, weights = exp.model.encoder, exp.model.encoder_weights
        if encoder.startswith("tu-"):
            import timm

            if not timm.is_model(encoder[3:]):
                raise ConfigError(f"model.encoder={encoder!r}: timm has no model {encoder[3:]!r}")
            if weights == "imagenet":
                from nailseg.stacks.mmdet.backbone import imagenet_provider

                imagenet_provider(encoder)
            elif weights not in ("", "none") and not Path(weights).expanduser().is_file():
                raise ConfigError(f"model.encoder_weights={weights!r}: no such file")

    def resumable(self, run: RunDir) -> Path | None:
        marker = run.path / "mmdet" / "last_checkpoint"
        if not marker.exists():
            return None
        last = Path(marker.read_text(encoding="utf-8").strip())
        if not _inside(last, run.path / "mmdet") or not last.exists():
            raise ConfigError(f"{marker}: names {last}, which is not a checkpoint inside this run's mmdet/ folder")
        load_mmengine_checkpoint(last)  # verify: corrupt or unsafe files are refused here, with the name
        return last

    def fit(self, ctx: TrainContext) -> FitResult | None:
        from mmdet.utils import register_all_modules
        from mmengine.config import Config
        from mmengine.runner import Runner
        from mmengine.utils import import_modules_from_strings

        register_all_modules(init_default_scope=True)
        exp, run = ctx.exp, ctx.run
        ann_files = _write_coco_splits(exp, run, ctx.data.pairs)
        world = world_size()
        iters_per_epoch = max(1, math.ceil(len(ctx.train_pairs) / (exp.trainer.batch_size * world)))
        if isinstance(exp.trainer.limit_train_batches, int):
            iters_per_epoch = min(iters_per_epoch, exp.trainer.limit_train_batches)
        on_gpu = resolve_accelerator(exp.trainer.accelerator, torch.cuda.is_available()) == "gpu"
        first = ctx.train_pairs[0]
        images_dir = Path(str(first.image)[: -len(first.key)]).resolve()  # keys are relative to images/
        cfg_dict = build_mmdet_config(exp, work_dir=(run.path / "mmdet").resolve(), images_dir=images_dir,
                                      ann_files=ann_files, iters_per_epoch=iters_per_epoch, on_gpu=on_gpu,
                                      launcher=_launcher(), epochs=ctx.max_epochs)  # a resume keeps its budget's plan
        if ctx.resume:
            cfg_dict["resume"] = True
        if cfg_dict["launcher"] == "pytorch" and not on_gpu:
            # mmengine's torchrun launcher assumes CUDA; on CPUs join a gloo group first (mmengine then
            # skips its own init) and build DDP without device ids.
            if not torch.distributed.is_initialized():
                torch.distributed.init_process_group("gloo")
            cfg_dict["model_wrapper_cfg"] = dict(type="MMDistributedDataParallel", device_ids=None,
                                                 broadcast_buffers=False)
        import_modules_from_strings(**cfg_dict["custom_imports"])  # as Config.fromfile does for a file
        cfg = Config(cfg_dict)
        if ctx.rank == 0:
            write_text(run.path / "mmdet_config.py", cfg.pretty_text)
            write_json(run.path / "mmdet_config.json", cfg_dict)
        runner = Runner.from_cfg(cfg)
        runner.register_hook(recorder_hook(ctx.log_epoch, iters_per_epoch, exp.trainer.batch_size), priority="LOW")
        if ctx.budget is not None:
            runner.register_hook(budget_hook(ctx, iters_per_epoch), priority="NORMAL")
        if ctx.resume:
            runner.register_hook(resume_hook(), priority="NORMAL")
        fit_started = time.perf_counter()
        with mmengine_safe_loading():
            runner.train()
        fit_time = time.perf_counter() - fit_started
        if runner.rank != 0:
            return None
        _export_weights(run)
        import mmcv
        import mmdet
        import mmengine

        records = read_jsonl(run.metrics)
        backbone = getattr(runner.model, "module", runner.model).backbone
        weights = getattr(backbone, "weights_record", None)  # a timm backbone's provider, version and SHA-256
        return FitResult(
            epochs=len(records), global_step=records[-1]["step"] if records else 0, fit_time_s=fit_time,
            precision="amp" if on_gpu else "32-true",
            parameters=sum(p.numel() for p in runner.model.parameters()),
            device=torch.cuda.get_device_name(0) if on_gpu else f"cpu ({platform.machine()}, {os.cpu_count()} cores)",
            world_size=world,
            versions={"nailseg": __version__, "torch": torch.__version__, "mmdet": mmdet.__version__,
                      "mmcv": mmcv.__version__, "mmengine": mmengine.__version__, "python": platform.python_version()},
            extras={"encoder_weights": weights} if weights is not None and not ctx.resume else {})

    def load_instance_predictor(self, run: RunDir, exp: Experiment, checkpoint: str = "best"):
        return load_instance_predictor(run, exp, checkpoint)

    def load_predictor(self, run: RunDir, exp: Experiment, checkpoint: str = "best") -> Predictor:
        instances = load_instance_predictor(run, exp, checkpoint)
        labels = exp.data.label_spec
        threshold = exp.model.score_threshold
        return (union_predictor(instances, threshold) if labels is None
                else class_map_predictor(instances, labels.n, threshold))

    def evaluate_instances(self, run: RunDir, exp: Experiment, chosen: list[Pair], all_pairs: list[Pair],
                           checkpoint: str = "best") -> dict:
        return evaluate_coco(load_instance_predictor(run, exp, checkpoint), chosen, all_pairs, exp.model.min_area,
                             exp.data.label_spec)

    def instance_summary(self, run: RunDir, exp: Experiment, val_pairs: list[Pair], all_pairs: list[Pair]) -> dict:
        """COCO segm/bbox mAP (@50, @75) of the best checkpoint on the validation split."""
        coco = self.evaluate_instances(run, exp, val_pairs, all_pairs)
        keys = {f"val_{k.lower()}": v for k, v in coco.items() if k.endswith(("mAP", "mAP_50", "mAP_75"))}
        scored = ("IoU/Dice of the union of instances" if exp.data.label_spec is None else
                  "class IoU/Dice of the instances painted by score (the first class where none is)")
        cut = exp.model.score_threshold
        return {**keys, "val_metrics_at": f"original resolution, best checkpoint; {scored} scoring >= {cut}"}

    def eject(self, exp: Experiment, pairs: dict, out: Path, config_name: str) -> list[Path]:
        """The experiment as a plain MMDetection folder in ``out`` (``stacks/mmdet/eject.py``)."""
        from nailseg.stacks.mmdet.eject import write_folder

        return write_folder(exp, pairs, out, config_name)

    def export(self, run: RunDir, exp: Experiment, fmt: str, out: Path | None = None) -> Path:
        """``state_dict``: the plain inference weights (loadable with weights_only=True) plus the mmdet config."""
        if fmt not in self.spec.exports:
            raise ConfigError(f"--format {fmt}: Mask R-CNN has no {fmt} export here; use --format state_dict "
                              "(plain PyTorch weights + the mmdet config)")
        out = Path(out or run.path / "export")
        out.mkdir(parents=True, exist_ok=True)
        model = load_model(run, exp, device="cpu")
        with atomic_path(out / "model.pth") as tmp:
            torch.save(model.state_dict(), tmp)
        write_text(out / "mmdet_config.py", (run.path / "mmdet_config.py").read_text())
        return out


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _export_weights(run: RunDir) -> None:
    """Plain state dicts for inference (``checkpoints/best.pth``, ``last.pth``): they load with weights_only=True."""
    work = run.path / "mmdet"
    last = (work / "last_checkpoint").read_text().strip()
    best = sorted(work.glob("best_coco_segm_mAP_iter_*.pth"))
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    for name, source in (("last.pth", Path(last)), ("best.pth", best[-1] if best else Path(last))):
        state = load_mmengine_checkpoint(source)["state_dict"]
        with atomic_path(run.checkpoints / name) as tmp:
            torch.save(state, tmp)


def load_model(run: RunDir, exp: Experiment, device: str | None = None, checkpoint: str = "best"):
    from mmdet.apis import init_detector
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    register_all_modules(init_default_scope=True)
    config_path = run.path / "mmdet_config.json"
    if not config_path.exists():
        raise ConfigError(f"{run.path}: no mmdet_config.json (did training start?)")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{config_path}: not valid JSON ({err})") from None
    # The model is rebuilt from the typed config, never from the file: only data settings are read from it.
    # weights "none": the run's checkpoint holds them all
    classes, colours = instance_classes(exp)
    raw["model"] = model_config(exp.model.encoder, exp.model.max_instances, norm=exp.normalization,
                                num_classes=len(classes), mask_threshold=exp.model.mask_threshold)
    cfg = Config(_restore_tuples(raw))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    import warnings

    with warnings.catch_warnings():
        # "checkpoint is None, use COCO classes": ours are set next. init_detector resets the filters
        # (simplefilter "once") just before it warns, so the warning is dropped where it is shown.
        show = warnings.showwarning
        warnings.showwarning = lambda message, *args, **kwargs: (
            None if "checkpoint is None" in str(message) else show(message, *args, **kwargs))
        with mmengine_safe_loading():
            model = init_detector(cfg, checkpoint=None, device=device)
    model.dataset_meta = {"classes": classes, "palette": colours}

    def load(weights: Path):
        state = safe_load(weights, "weights file", map_location=device)
        if not isinstance(state, dict):
            raise ConfigError(f"{weights}: not a state dict")
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ConfigError(f"{weights}: does not fit the model ({str(err).splitlines()[0][:120]})") from None
        return model.eval()

    return load_with_fallback(run, checkpoint, run.checkpoints / "best.pth", run.checkpoints / "last.pth", load)


def _restore_tuples(obj, key: str | None = None):
    """JSON turned the config's tuples into lists; mmcv insists on tuples for these keys."""
    if isinstance(obj, dict):
        return {k: _restore_tuples(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        items = [_restore_tuples(v) for v in obj]
        return tuple(items) if key in ("scale", "out_indices", "meta_keys", "classes") else items
    return obj


def load_instance_predictor(run: RunDir, exp: Experiment, checkpoint: str = "best"):
    """RGB image -> (masks bool (K, H, W), scores (K,), class indices (K,)) at the image's own size;
    a class index is MMDetection's label + 1 (class 0, the background, has no instances)."""
    from mmdet.apis import inference_detector

    model = load_model(run, exp, checkpoint=checkpoint)

    def predict(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = inference_detector(model, np.ascontiguousarray(image[..., ::-1]))  # mmdet reads BGR
        inst = result.pred_instances
        masks = inst.masks.cpu().numpy().astype(bool) if len(inst) else np.zeros((0, *image.shape[:2]), bool)
        return masks, inst.scores.cpu().numpy(), inst.labels.cpu().numpy().astype(np.int64) + 1

    return predict


def union_predictor(instances, score_threshold: float) -> Predictor:
    """Instances -> the union of those scoring at least ``score_threshold`` (``model.score_threshold``),
    as a 0/1 mask: what the semantic stacks' metrics score."""
    def predict(image: np.ndarray) -> np.ndarray:
        masks, scores, _ = instances(image)
        keep = masks[scores >= score_threshold]
        return keep.any(axis=0).astype(np.float32) if len(keep) else np.zeros(image.shape[:2], np.float32)

    return predict


def class_map_predictor(instances, n: int, score_threshold: float) -> Predictor:
    """Instances -> a class map as (H, W, n) one-hot scores, the form every many-class predictor
    returns: each pixel takes the class of the highest-scoring instance over it (instances scoring
    below ``score_threshold`` left out), the background class 0 where no instance is."""
    def predict(image: np.ndarray) -> np.ndarray:
        masks, scores, classes = instances(image)
        painted = np.zeros(image.shape[:2], np.int64)
        for i in np.argsort(scores, kind="stable"):  # ascending: a higher score paints over a lower one
            if scores[i] >= score_threshold:
                painted[masks[i]] = classes[i]
        return np.eye(n, dtype=np.float32)[painted]

    return predict


def evaluate_coco(instances, chosen: list[Pair], all_pairs: list[Pair], min_area: int, labels=None) -> dict:
    """COCO bbox and segm mAP (all, @50, @75) of the instance predictor on ``chosen``."""
    import contextlib as _ctx
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from nailseg.core.data.coco import encode_rle

    ids = image_ids(all_pairs)
    gt_dict, _ = to_coco(chosen, ids, min_area=min_area, labels=labels)
    results = []
    for pair in chosen:
        masks, scores, classes = instances(read_image(pair.image))
        for m, s, c in zip(masks, scores, classes):
            if not m.any():
                continue
            ys, xs = np.nonzero(m)
            results.append({"image_id": ids[pair.key], "category_id": int(c), "segmentation": encode_rle(m),
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


STACK = MmdetStack()
