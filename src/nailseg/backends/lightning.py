"""PyTorch Lightning + segmentation_models_pytorch: the ``lightning`` backend."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from nailseg import __version__
from nailseg._tensorboard import use_tensorboard_without_tensorflow
from nailseg.augment import IMAGENET_MEAN, IMAGENET_STD
from nailseg.data.discover import find_pairs
from nailseg.evaluate import Predictor, semantic_summary
from nailseg.experiment import Experiment
from nailseg.io import append_jsonl, read_jsonl, write_json, write_text
from nailseg.metrics import scores
from nailseg.models.torch_models import build_loss, build_model, foreground_probability, without_pretrained
from nailseg.pipelines import build_loaders
from nailseg.runs import RUN_DIR_ENV, RunDir, global_rank, prepare_run, wait_for_split


use_tensorboard_without_tensorflow()

def resolve_precision(exp: Experiment) -> tuple[str, str, bool]:
    """(accelerator, precision, channels_last): ``auto`` = bf16-mixed + channels_last on a GPU, 32 on a CPU."""
    accelerator = exp.trainer.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    on_gpu = accelerator in ("gpu", "cuda")
    precision = exp.trainer.precision
    if precision == "auto":
        precision = "bf16-mixed" if on_gpu else "32-true"
    else:  # the Keras spellings mean the same here
        precision = {"32": "32-true", "float32": "32-true", "mixed_float16": "16-mixed"}.get(precision, precision)
    return accelerator, precision, on_gpu


class SegmentationModule(L.LightningModule):
    """A binary segmentation model, its loss, optimiser and metrics."""

    def __init__(self, config: dict, channels_last: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.exp = Experiment.model_validate(config)
        self.model = build_model(self.exp.model)
        self.loss_fn = build_loss(self.exp.loss, self.exp.model.classes)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.register_buffer("val_counts", torch.zeros(4, dtype=torch.float64), persistent=False)
        self.gpu_augment = None
        if self.exp.augment.device == "gpu":
            from nailseg.pipelines.kornia_gpu import GpuAugment

            self.gpu_augment = GpuAugment(self.exp.augment.train, self.exp.data.size_hw)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.gpu_augment is not None:
            batch["image"], batch["mask"] = self.gpu_augment(batch["image"], batch["mask"], train=self.trainer.training)
        if self.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def training_step(self, batch, batch_idx: int):
        logits = self(batch["image"])
        loss = self.loss_fn(logits, batch["mask"])
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=batch["image"].shape[0], sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self.val_counts.zero_()

    def validation_step(self, batch, batch_idx: int):
        logits = self(batch["image"])
        target = batch["mask"]
        loss = self.loss_fn(logits, target)
        self.log("val_loss", loss, on_epoch=True, batch_size=target.shape[0], sync_dist=True)
        pred = foreground_probability(logits) > 0.5
        truth = target > 0.5
        tp = (pred & truth).sum()
        fp = (pred & ~truth).sum()
        fn = (~pred & truth).sum()
        self.val_counts += torch.stack([tp, fp, fn, pred.numel() - tp - fp - fn]).double()

    def on_validation_epoch_end(self) -> None:
        counts = self.trainer.strategy.reduce(self.val_counts.clone(), reduce_op="sum")
        result = scores(*counts.tolist())
        self.log("val_iou", result["iou"], prog_bar=True, sync_dist=False)
        self.log("val_dice", result["dice"], prog_bar=False, sync_dist=False)

    def configure_optimizers(self):
        o = self.exp.optim
        scale = o.encoder_lr_scale
        if scale is None:
            scale = 0.1 if self.exp.model.family == "segformer" else 1.0
        encoder_ids = {id(p) for p in self.model.encoder.parameters()}
        groups = [
            {"params": [p for p in self.model.parameters() if id(p) in encoder_ids], "lr": o.lr * scale},
            {"params": [p for p in self.model.parameters() if id(p) not in encoder_ids], "lr": o.lr},
        ]
        if o.name == "adamw":
            opt = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
        elif o.name == "adam":
            opt = torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
        else:
            opt = torch.optim.SGD(groups, lr=o.lr, momentum=0.9, weight_decay=o.weight_decay)
        if o.scheduler == "none" and o.warmup_epochs == 0:
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda epoch: lr_factor(epoch, self.exp.trainer.max_epochs, o.warmup_epochs, o.scheduler, o.poly_power))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def lr_factor(epoch: int, epochs: int, warmup: int, schedule: str, power: float = 1.0) -> float:
    """Multiplier of the base lr at ``epoch``: linear warm-up, then cosine (to 1%), poly or constant."""
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    progress = min(1.0, (epoch - warmup) / max(1, epochs - warmup))
    if schedule == "cosine":
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "poly":
        return max(0.0, 1.0 - progress) ** power
    return 1.0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary name and rename, so a kill never leaves a torn file."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class EpochRecorder(Callback):
    """One ``metrics.jsonl`` line per finished epoch: losses, IoU, Dice, images/s, epoch time."""

    def __init__(self, path: Path, grouping=None, sampler=None):
        self.path = path
        self.grouping, self.sampler = grouping, sampler
        self._t0 = self._train_end = 0.0
        self._seen = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0, self._seen, self._train_end = time.perf_counter(), 0, 0.0
        self._lr = trainer.optimizers[0].param_groups[-1]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._seen += batch["image"].shape[0] * trainer.world_size  # approximate when the last batches differ

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and not self._train_end:
            self._train_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        now = time.perf_counter()
        train_time = (self._train_end or now) - self._t0
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        record = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "train_loss": m.get("train_loss_epoch"),
            "val_loss": m.get("val_loss"),
            "val_iou": m.get("val_iou"),
            "val_dice": m.get("val_dice"),
            "lr": self._lr,  # the decoder's; the encoder's is lr * optim.encoder_lr_scale
            "images_per_s": self._seen / train_time if train_time > 0 else None,
            "epoch_time_s": now - self._t0,
        }
        if self.sampler is not None:  # what the balanced sampler really drew this epoch
            record["group_share"] = self.grouping.shares(self.sampler.full_stream(trainer.current_epoch))
        append_jsonl(self.path, record)


def _trim_metrics(run: RunDir) -> None:
    """On resume, drop metric lines of epochs the last checkpoint does not hold."""
    if not run.last_checkpoint.exists():
        write_text(run.metrics, "")
        return
    ckpt = torch.load(run.last_checkpoint, map_location="cpu", weights_only=False)  # our own file
    done = int(ckpt["epoch"])
    kept = [r for r in read_jsonl(run.metrics) if r.get("epoch", -1) <= done]
    write_text(run.metrics, "".join(json.dumps(r) + "\n" for r in kept))


def _loggers(exp: Experiment, run: RunDir):
    loggers = []
    if exp.logging.tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run.path), name="tb", version="", default_hp_metric=False))
    if exp.logging.wandb.enabled:
        from nailseg._optional import require

        require("wandb", "wandb", "Weights & Biases logging")
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project=exp.logging.wandb.project, name=run.path.name,
                                   save_dir=str(run.path), offline=exp.logging.wandb.mode == "offline"))
    return loggers or False


def train(exp: Experiment, run: RunDir, *, resume: bool = False) -> dict | None:
    """Fit the model, then score the best checkpoint on the val split at original resolution.

    Returns the summary on the main process, ``None`` on other DDP ranks.
    """
    started = time.time()
    rank_zero = global_rank() == 0
    if rank_zero:
        split, fg_share = prepare_run(exp, run, resume=resume)
    else:
        split, fg_share = wait_for_split(run), None
    pairs = {p.key: p for p in find_pairs(exp.data.root)[0]}
    train_pairs = [pairs[k] for k in split["train"]]
    val_pairs = [pairs[k] for k in split["val"]] or train_pairs
    grouping, sampler = _balanced_sampler(exp, split["train"], fg_share)

    L.seed_everything(exp.trainer.seed, workers=True, verbose=False)
    accelerator, precision, channels_last = resolve_precision(exp)
    module = SegmentationModule(exp.to_dict(), channels_last=channels_last)
    ckpt_path = None
    if resume and rank_zero:
        _trim_metrics(run)
    if resume and run.last_checkpoint.exists():
        ckpt_path = str(run.last_checkpoint)

    callbacks = [
        ModelCheckpoint(dirpath=run.checkpoints, filename="best", monitor="val_iou", mode="max",
                        save_last=True, auto_insert_metric_name=False, enable_version_counter=False),
        EpochRecorder(run.metrics, grouping, sampler),
        TQDMProgressBar(refresh_rate=max(1, len(train_pairs) // exp.trainer.batch_size // 20)),
    ]
    loggers = _loggers(exp, run)
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    t = exp.trainer
    trainer = L.Trainer(
        accelerator=accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=precision, max_epochs=t.max_epochs, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val, deterministic=t.deterministic,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        logger=loggers, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run.path), log_every_n_steps=1, num_sanity_val_steps=0,
        enable_model_summary=False, use_distributed_sampler=sampler is None,
    )
    fit_started = time.perf_counter()
    previous = os.environ.get(RUN_DIR_ENV)
    os.environ[RUN_DIR_ENV] = str(run.path.resolve())  # DDP workers re-run the CLI: join this run
    try:
        train_loader, val_loader = build_loaders(exp, train_pairs, val_pairs, sampler=sampler)
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
    finally:
        if previous is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = previous
    fit_time = time.perf_counter() - fit_started
    if not trainer.is_global_zero:
        return None
    return _finish(exp, run, trainer, module, val_pairs, started, fit_time, precision)


def _balanced_sampler(exp: Experiment, train_keys: list[str], fg_share: dict[str, float] | None):
    """The grouping and sampler for ``data.balance`` (``(None, None)`` when it is off)."""
    cfg = exp.data.balance
    if cfg is None:
        return None, None
    from nailseg.data.balance import make_grouping
    from nailseg.pipelines.torch_cpu import BalancedSampler

    if fg_share is None and cfg.by == "fg_bins":  # a non-zero DDP rank: measure like rank 0 did
        from nailseg.data.check import check_dataset

        fg_share = {s.key: s.fg_share for s in check_dataset(exp.data.root, progress=False).stats}
    grouping = make_grouping(train_keys, cfg, fg_share)
    epoch_size = cfg.epoch_size or len(train_keys)
    return grouping, BalancedSampler(grouping.sample_weights(), epoch_size, exp.trainer.seed)


def _finish(exp, run, trainer, module, val_pairs, started, fit_time, precision) -> dict:
    common = semantic_summary(load_predictor(run, exp), val_pairs, run, exp)
    summary = {
        "backend": "lightning", **common, "epochs": trainer.current_epoch, "global_step": trainer.global_step,
        "fit_time_s": fit_time, "wall_time_s": time.time() - started, "precision": precision,
        "parameters": sum(p.numel() for p in module.model.parameters()), "device": _device_name(trainer),
        "world_size": trainer.world_size, "versions": _versions(),
    }
    if exp.model.family == "segformer":
        summary["hf"] = str(export(run, exp, "hf"))
    write_json(run.summary, summary)
    return summary


def _device_name(trainer) -> str:
    if torch.cuda.is_available() and trainer.accelerator.__class__.__name__ == "CUDAAccelerator":
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _versions() -> dict[str, str]:
    import segmentation_models_pytorch as smp

    versions = {"nailseg": __version__, "python": platform.python_version(), "torch": torch.__version__,
                "lightning": L.__version__, "segmentation_models_pytorch": smp.__version__}
    try:
        import transformers

        versions["transformers"] = transformers.__version__
    except ImportError:
        pass
    return versions


def load_model(run: RunDir, exp: Experiment) -> torch.nn.Module:
    """The trained network of a run (best checkpoint), on the CPU, in eval mode.

    Checkpoints are read with ``weights_only=True``: only tensors and plain containers.
    """
    ckpt = torch.load(run.inference_checkpoint(), map_location="cpu", weights_only=True)
    model = build_model(without_pretrained(exp.model))
    model.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()
                           if k.startswith("model.")})
    return model.eval()


def load_predictor(run: RunDir, exp: Experiment, *, device: str | None = None) -> Predictor:
    """A predictor from the run's best checkpoint: RGB image -> probability map at its size."""
    import cv2

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(run, exp).to(device)
    h, w = exp.data.size_hw
    mean = np.asarray(IMAGENET_MEAN, np.float32) * 255
    std = np.asarray(IMAGENET_STD, np.float32) * 255

    @torch.inference_mode()
    def predict(image: np.ndarray) -> np.ndarray:
        x = (cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) - mean) / std
        tensor = torch.from_numpy(x.transpose(2, 0, 1))[None].to(device)
        prob = foreground_probability(model(tensor))[0, 0].float().cpu().numpy()
        return cv2.resize(prob, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)

    return predict


def export(run: RunDir, exp: Experiment, fmt: str, out: Path | None = None) -> Path:
    """Write the run's model for use without nailseg.

    ``hf`` (SegFormer runs): ``save_pretrained`` folder (config + safetensors + id2label) that
    ``SegformerForSemanticSegmentation.from_pretrained`` loads. ``state_dict``: a plain state
    dict (``model.pt``) that loads with ``torch.load(..., weights_only=True)`` into the model
    the run's config describes.
    """
    from nailseg.errors import ConfigError

    model = load_model(run, exp)
    if fmt == "hf":
        if exp.model.family != "segformer":
            raise ConfigError(f"--format hf: only SegFormer runs export to transformers (this run is {exp.model.family})")
        out = Path(out or run.path / "hf")
        from nailseg.io import atomic_dir

        with atomic_dir(out) as tmp:
            model.hf.save_pretrained(tmp, safe_serialization=True)
        return out
    if fmt == "state_dict":
        out = Path(out or run.path / "model.pt")
        from nailseg.io import atomic_path

        with atomic_path(out) as tmp:
            torch.save(model.state_dict(), tmp)
        return out
    raise ConfigError(f"--format {fmt}: the lightning backend exports hf or state_dict")
