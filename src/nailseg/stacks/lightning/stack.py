"""PyTorch Lightning + segmentation_models_pytorch (and transformers SegFormer): the ``lightning`` stack.

Lightning itself is imported by :meth:`LightningStack.fit` only: ``eval``, ``predict``, ``export`` and
``serve`` need the network, not the trainer, and start ~2.5 s sooner without it (Lightning pulls in
torchmetrics, which imports most of torchvision).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from nailseg import __version__
from nailseg.config import Experiment
from nailseg.core.evaluate import Predictor, at_image_size, model_input
from nailseg.runs import RunDir, load_with_fallback
from nailseg.core.runtime import resolve_accelerator
from nailseg.contract import FitResult, TrainContext
from nailseg.errors import ConfigError
from nailseg.specs import PIPELINE_SPECS, STACKS
from nailseg.stacks._torch.checkpoints import safe_load
from nailseg.stacks.lightning.hardware import torch_precision
from nailseg.stacks.lightning.models import (build_model, check_model_exists, foreground_probability, verify_init_source,
                                             without_pretrained)
from nailseg.stacks._torch.tensorboard import use_tensorboard_without_tensorflow


class _DropAdverts(logging.Filter):
    """Lightning's 'try litlogger' tip on every fit is an advert, not information about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())
# torch.utils._pytree's deprecation of register_pytree_node, raised from inside libraries at import
warnings.filterwarnings("ignore", message=r".*_pytree.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=r".*_pytree.*", category=DeprecationWarning)

use_tensorboard_without_tensorflow()


def _loggers(exp: Experiment, run: RunDir):
    loggers = []
    if exp.logging.tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run.path), name="tb", version="", default_hp_metric=False))
    if exp.logging.wandb.enabled:
        from nailseg.core.optional import require

        require("wandb", "wandb", "Weights & Biases logging")
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=exp.logging.wandb.project, name=run.path.name,
                                   save_dir=str(run.path), offline=exp.logging.wandb.mode == "offline"))
    return loggers or False


def _balanced_sampler(ctx: TrainContext):
    """The grouping and sampler for ``data.balance`` (``(None, None)`` when it is off)."""
    grouping = ctx.grouping()
    if grouping is None:
        return None, None
    from nailseg.stacks.lightning.loaders.dataloader import BalancedSampler

    return grouping, BalancedSampler(grouping.sample_weights(), ctx.epoch_size, ctx.exp.trainer.seed)


class LightningStack:
    spec = STACKS["lightning"]

    def preflight(self, exp: Experiment) -> None:
        t = exp.trainer
        if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ConfigError(f"trainer.accelerator={t.accelerator}: no CUDA GPU on this machine (use auto or cpu)")
        accelerator = resolve_accelerator(t.accelerator, torch.cuda.is_available())
        if isinstance(t.devices, int) and accelerator == "gpu" and t.devices > torch.cuda.device_count():
            raise ConfigError(f"trainer.devices={t.devices}: this machine has {torch.cuda.device_count()} GPU(s)")
        if t.strategy == "deepspeed":
            import importlib.util

            if importlib.util.find_spec("deepspeed") is None or accelerator != "gpu":
                raise ConfigError("trainer.strategy=deepspeed: needs the deepspeed package and a CUDA GPU "
                                  "(pip install deepspeed on a GPU machine); use auto or ddp here")
        if t.strategy == "fsdp" and accelerator != "gpu":
            raise ConfigError("trainer.strategy=fsdp: FSDP shards a model across GPUs; this run is on the CPU "
                              "(use auto or ddp)")
        pipeline = PIPELINE_SPECS[exp.pipeline]
        if pipeline.module:
            from nailseg.core.optional import require

            require(pipeline.module, pipeline.extras[0], f"The {pipeline.name} pipeline (data.pipeline: {pipeline.name})")
        check_model_exists(exp.model)
        verify_init_source(exp.model)

    def resumable(self, run: RunDir) -> Path | None:
        """The newest of ``last.ckpt`` and ``best.ckpt`` by finished epoch, each verified first.

        ``best.ckpt`` counts too: a kill while the first ``last.ckpt`` was written leaves only it."""
        found = [(p, _verified_epoch(p)) for p in (run.last_checkpoint, run.best_checkpoint) if p.is_file()]
        if not found:
            return None
        return max(found, key=lambda item: item[1])[0]

    def fit(self, ctx: TrainContext) -> FitResult | None:
        import lightning as L
        from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

        from nailseg.stacks.lightning.callbacks import (AtomicCheckpointIO, EpochRecorder, LastCheckpoint,
                                                        TimeBudgetCallback)
        from nailseg.stacks.lightning.loaders import build_loaders
        from nailseg.stacks.lightning.module import SegmentationModule

        exp, run = ctx.exp, ctx.run
        grouping, sampler = _balanced_sampler(ctx)
        L.seed_everything(exp.trainer.seed, workers=True, verbose=False)
        accelerator = resolve_accelerator(exp.trainer.accelerator, torch.cuda.is_available())
        precision = torch_precision(exp.trainer.precision, accelerator)
        resume_from = self.resumable(run) if ctx.resume else None
        ckpt_path = str(resume_from) if resume_from else None
        module = SegmentationModule(exp.to_dict(), channels_last=precision.channels_last, initialise=ckpt_path is None,
                                    class_weights=ctx.data.class_weights)
        module.schedule_epochs = ctx.max_epochs  # a resumed budgeted run keeps its planned schedule
        callbacks = [
            ModelCheckpoint(dirpath=run.checkpoints, filename="best", monitor="val_iou", mode="max",
                            auto_insert_metric_name=False, enable_version_counter=False),
            EpochRecorder(ctx, grouping, sampler),
            LastCheckpoint(run.last_checkpoint, ctx.commit_epoch),  # the line is staged, then checkpointed, then written
        ]
        if ctx.budget is not None:  # on every rank: each takes rank 0's plan (a broadcast)
            callbacks.append(TimeBudgetCallback(ctx))
        if sys.stderr.isatty():
            callbacks.append(TQDMProgressBar(refresh_rate=max(1, len(ctx.train_pairs) // exp.trainer.batch_size // 20)))
        loggers = _loggers(exp, run)
        if loggers:
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        t = exp.trainer
        trainer = L.Trainer(
            accelerator=accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
            precision=precision.name, max_epochs=ctx.max_epochs, accumulate_grad_batches=t.accumulate_grad_batches,
            gradient_clip_val=t.gradient_clip_val, deterministic=t.deterministic,
            limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
            logger=loggers, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
            default_root_dir=str(run.path), log_every_n_steps=1, num_sanity_val_steps=0,
            enable_model_summary=False, enable_progress_bar=sys.stderr.isatty(),
            use_distributed_sampler=sampler is None,
        )
        fit_started = time.perf_counter()
        train_loader, val_loader = build_loaders(exp, ctx.train_pairs, ctx.val_pairs, sampler=sampler,
                                                 drop_last=ctx.drop_last, run_folder=run.path)
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path,
                    weights_only=True)
        fit_time = time.perf_counter() - fit_started
        if not trainer.is_global_zero:
            return None
        extras = {}
        weights = getattr(module.model, "nailseg_weights", None)
        if weights is not None and not ctx.resume:
            extras["encoder_weights"] = weights  # provider, package version and SHA-256, or the file's
        if exp.model.family in HF_FAMILIES:
            extras["hf"] = str(self.export(run, exp, "hf"))
        return FitResult(epochs=trainer.current_epoch, global_step=trainer.global_step, fit_time_s=fit_time,
                         precision=precision.name, parameters=sum(p.numel() for p in module.model.parameters()),
                         device=_device_name(trainer), world_size=trainer.world_size, versions=_versions(),
                         extras=extras)

    def load_model(self, run: RunDir, exp: Experiment, checkpoint: str = "best") -> torch.nn.Module:
        """The trained network of a run (best checkpoint, else last; or the last one only), on the
        CPU, in eval mode. Checkpoints are read with ``weights_only=True``; a corrupt best
        checkpoint falls back to the last one with a warning."""
        def load(path: Path) -> torch.nn.Module:
            ckpt = safe_load(path, "checkpoint")
            state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
            if not isinstance(state, dict):
                raise ConfigError(f"{path}: not a Lightning checkpoint (no state_dict)")
            model = build_model(without_pretrained(exp.model))
            try:
                model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
            except RuntimeError as err:
                raise ConfigError(f"{path}: does not fit the model in config.yaml "
                                  f"({str(err).splitlines()[0][:120]})") from None
            return model.eval()

        return load_with_fallback(run, checkpoint, run.best_checkpoint, run.last_checkpoint, load)

    def load_predictor(self, run: RunDir, exp: Experiment, checkpoint: str = "best", *,
                       device: str | None = None) -> Predictor:
        """A predictor from the run's best (or last) checkpoint: RGB image -> probability map at its size
        (class probabilities (H, W, C) with ``data.classes``)."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = self.load_model(run, exp, checkpoint).to(device)
        many_classes = exp.data.label_spec is not None

        @torch.inference_mode()
        def predict(image: np.ndarray) -> np.ndarray:
            x = model_input(image, exp.data.size_hw, exp.normalization, float_resize=True)  # as the ONNX graph
            tensor = torch.from_numpy(x.transpose(2, 0, 1))[None].to(device)
            logits = model(tensor)
            if many_classes:  # (H, W, C) class probabilities
                return at_image_size(torch.softmax(logits.float(), 1)[0].permute(1, 2, 0).cpu().numpy(), image)
            return at_image_size(foreground_probability(logits)[0, 0].float().cpu().numpy(), image)

        return predict

    def eject(self, exp: Experiment, pairs: dict, out: Path, config_name: str) -> list[Path]:
        """The experiment as a plain Lightning + smp script in ``out`` (``stacks/lightning/eject.py``)."""
        from nailseg.stacks.lightning.eject import write_script

        return write_script(exp, pairs, out, config_name)

    def export(self, run: RunDir, exp: Experiment, fmt: str, out: Path | None = None, *, opset: int | None = None,
               int8: str | None = None, half: bool = False) -> Path:
        """``onnx``: see :func:`export_verified_onnx` (``opset``; ``int8``, a target CPU profile or
        ``auto``, and ``half`` add verified int8 and float16 copies). ``hf`` (transformers runs:
        UperNet, SegFormer): a ``save_pretrained`` folder that the model class's ``from_pretrained``
        loads. ``state_dict``: a plain state dict (``model.pt``) that loads with
        ``torch.load(..., weights_only=True)``."""
        from nailseg.core.io import atomic_dir, atomic_path

        if fmt == "hf" and exp.model.family not in HF_FAMILIES:
            raise ConfigError(f"--format hf: only transformers models ({', '.join(HF_FAMILIES)}) export to a "
                              f"save_pretrained folder (this run is {exp.model.family})")
        if fmt not in self.spec.exports:
            raise ConfigError(f"--format {fmt}: the lightning stack exports {', '.join(self.spec.exports)}")
        if (int8 or half) and exp.data.label_spec is not None:
            raise ConfigError("--int8/--half: the reduced-precision copies are verified on foreground masks; a "
                              "many-class model exports in float32 (leave them out)")
        model = self.load_model(run, exp)
        if fmt == "onnx":
            path = export_verified_onnx(self, model, run, exp, Path(out or run.path / "model.onnx"), opset=opset)
            if int8 or half:
                from nailseg.deploy.quantize import convert_half, quantize_int8, record_int8
                from nailseg.deploy.verify import training_images, verification_images

                images, source = verification_images(run, exp)
                if int8:
                    report = quantize_int8(path, path.with_suffix(".int8.onnx"), training_images(run, exp), images,
                                           source, target=int8)
                    record_int8(path.parent / "export.json", report)
                if half:
                    convert_half(path, path.with_suffix(".fp16.onnx"), images, source)
            return path
        if fmt == "hf":
            out = Path(out or run.path / "hf")
            if exp.data.label_spec is not None:  # the data's class names, for transformers' pipelines
                model.hf.config.id2label = dict(enumerate(exp.data.label_spec.names))
                model.hf.config.label2id = {name: i for i, name in enumerate(exp.data.label_spec.names)}
            with atomic_dir(out) as tmp:
                model.hf.save_pretrained(tmp, safe_serialization=True)
            return out
        out = Path(out or run.path / "model.pt")
        with atomic_path(out) as tmp:
            torch.save(model.state_dict(), tmp)
        return out


HF_FAMILIES = ("segformer", "upernet")  # transformers models: summary.json's hf folder, --format hf


def export_verified_onnx(stack: LightningStack, model, run: RunDir, exp: Experiment, out: Path, *,
                         opset: int | None = None) -> Path:
    """Export, then check the file on onnxruntime against the torch model on the run's
    validation images (or, where the data is gone, on synthetic ones); the figures go to
    ``export.json`` beside it, and a file above tolerance is never left behind."""
    import hashlib

    from nailseg.core.io import atomic_path, write_json
    from nailseg.deploy.onnx_model import OnnxSegmenter
    from nailseg.deploy.verify import compare_predictors, require_agreement, verification_images
    from nailseg.stacks.lightning.onnx_export import OPSET, export_onnx

    opset = opset or OPSET
    if not 13 <= opset <= 23:
        raise ConfigError(f"--opset {opset}: use an ONNX opset from 13 to 23 (default {OPSET})")

    config_hash = hashlib.sha256(run.config.read_bytes()).hexdigest() if run.config.exists() else ""
    from nailseg.core.postprocess import load_run_options

    metadata = {"nailseg.image_size": list(exp.data.size_hw),
                "nailseg.threshold": str(load_run_options(run.path).threshold),
                "nailseg.version": __version__, "nailseg.config_sha256": config_hash,
                "nailseg.model": exp.model.describe(), "nailseg.normalization": exp.normalization.as_dict(),
                "nailseg.run": str(run.path.resolve()),
                "nailseg.resize_in_graph": True,
                "nailseg.input": "uint8 RGB (N, H, W, 3), any H and W (resized to image_size inside the graph)",
                "nailseg.output": "foreground probability float32 (N, H, W), at the input's H and W"}
    labels = exp.data.label_spec
    if labels is not None:  # many classes: the names travel with the graph
        metadata.update({"nailseg.classes": list(labels.names), "nailseg.ignore_index": labels.ignore_index,
                         "nailseg.output": "class probabilities float32 (N, H, W, C), at the input's H and W; "
                                           "the class map is their argmax over C (names: nailseg.classes)"})
    images, source = verification_images(run, exp)
    with atomic_path(out) as tmp:
        exporter = export_onnx(model, tmp, metadata, sample_hw=exp.data.size_hw, norm=exp.normalization, opset=opset,
                               many_classes=labels is not None)
        onnx_model = OnnxSegmenter(tmp)
        # 1. the graph computes what the torch wrapper it was traced from computes, photo for photo
        graph = compare_predictors(_graph_reference(model, exp), onnx_model, images)
        graph_tolerance = require_agreement(graph, "onnx", "torch", source)
        # 2. and gives the masks of nailseg's own predictor (OpenCV resizes around the torch model)
        check = compare_predictors(stack.load_predictor(run, exp, device="cpu"), onnx_model, images)
        tolerance = require_agreement(check, "onnx-pipeline", "nailseg predict", source)
    report = {"format": "onnx", "file": str(out), "bytes": out.stat().st_size, "opset": opset, "exporter": exporter,
              "verified_on": source, **check, "tolerance": tolerance,
              "graph_check": {**{k: graph[k] for k in ("max_abs_diff", "mask_agreement", "images")},
                              "tolerance": graph_tolerance},
              "metadata": {k.removeprefix("nailseg."): v for k, v in metadata.items()}}
    write_json(out.parent / "export.json", report)
    print(f"verified on {source}: max |diff| {check['max_abs_diff']:.2e}, mask agreement "
          f"{100 * check['mask_agreement']:.3f}% ({out.parent / 'export.json'})", file=sys.stderr)
    return out


def _graph_reference(model, exp: Experiment):
    """The exported graph's torch original, run eagerly: photo in, probability at its size out."""
    from nailseg.stacks.lightning.onnx_export import ExportWrapper

    wrapper = ExportWrapper(model.float().eval(), exp.normalization, exp.data.size_hw,
                            many_classes=exp.data.label_spec is not None).eval()

    @torch.inference_mode()
    def predict(image: np.ndarray) -> np.ndarray:
        return wrapper(torch.from_numpy(np.array(image))[None])[0].numpy()

    return predict


def _verified_epoch(path: Path) -> int:
    """The epoch a Lightning checkpoint holds, after checking its structure (one line naming the
    file otherwise), so that resume refuses a tampered file before anything is written."""
    ckpt = safe_load(path, "checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or not ckpt["state_dict"]:
        raise ConfigError(f"{path}: not a Lightning checkpoint (no state_dict of tensors)")
    epoch = ckpt.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ConfigError(f"{path}: not a Lightning checkpoint (no epoch number)")
    if not isinstance(ckpt.get("pytorch-lightning_version"), str) or not isinstance(ckpt.get("loops"), dict):
        raise ConfigError(f"{path}: not a Lightning checkpoint (no pytorch-lightning_version/loops)")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["state_dict"].items()):
        raise ConfigError(f"{path}: not a Lightning checkpoint (its state_dict holds more than named tensors)")
    return epoch


def _device_name(trainer) -> str:
    if torch.cuda.is_available() and trainer.accelerator.__class__.__name__ == "CUDAAccelerator":
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _versions() -> dict[str, str]:
    import lightning as L
    import segmentation_models_pytorch as smp

    versions = {"nailseg": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "lightning": L.__version__, "segmentation_models_pytorch": smp.__version__}
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:
        pass
    return versions


STACK = LightningStack()
