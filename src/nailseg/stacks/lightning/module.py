"""The LightningModule: a segmentation network, its loss, optimiser, schedule and metrics."""

from __future__ import annotations

import lightning as L
import torch

from nailseg.config import Experiment
from nailseg.core.metrics import scores
from nailseg.core.runtime import encoder_lr_scale, lr_factor
from nailseg.stacks.lightning.models import (build_loss, build_model, foreground_probability, init_from,
                                             without_pretrained)


class SegmentationModule(L.LightningModule):
    """A segmentation model (binary, or many classes with ``data.classes``), its loss, optimiser and metrics."""

    def __init__(self, config: dict, channels_last: bool = False, initialise: bool = True,
                 class_weights: list[float] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.exp = Experiment.model_validate(config)
        # A resumed run takes every weight from its checkpoint: no pretrained weights to fetch.
        self.model = build_model(self.exp.model if initialise else without_pretrained(self.exp.model))
        if initialise:
            init_from(self.model, self.exp.model)
        self.loss_fn = build_loss(self.exp.loss, self.exp.model.classes, self.exp.data.ignore_index, class_weights)
        self.channels_last = channels_last
        self.schedule_epochs = self.exp.trainer.max_epochs  # the epochs the lr schedule spans
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.register_buffer("val_counts", torch.zeros(4, dtype=torch.float64), persistent=False)
        self.labels = self.exp.data.label_spec  # many classes: a confusion matrix instead of 4 counts
        if self.labels is not None:
            self.register_buffer("val_matrix", torch.zeros(self.labels.n, self.labels.n, dtype=torch.float64),
                                 persistent=False)
        from nailseg.stacks.lightning.loaders.kornia import device_augment

        self.gpu_augment = device_augment(self.exp)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)

    def train(self, mode: bool = True):
        """``optim.freeze_encoder_bn``: the encoder's BatchNorm layers stay in eval mode, so their
        running statistics keep the pretrained values (mmdet's ``norm_eval``); Lightning calls this
        at the start of every training epoch."""
        super().train(mode)
        if mode and getattr(self, "exp", None) is not None and self.exp.optim.freeze_encoder_bn:
            for m in self.model.encoder.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

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
        if self.labels is not None:
            self.val_matrix.zero_()

    def validation_step(self, batch, batch_idx: int):
        logits = self(batch["image"])
        target = batch["mask"]
        loss = self.loss_fn(logits, target)
        self.log("val_loss", loss, on_epoch=True, batch_size=target.shape[0], sync_dist=True)
        if self.labels is not None:
            truth = target[:, 0].long()
            keep = truth != self.labels.ignore_index
            n = self.labels.n
            index = truth[keep] * n + logits.argmax(1)[keep]
            self.val_matrix += torch.bincount(index, minlength=n * n).reshape(n, n).double()
            return
        pred = foreground_probability(logits) > 0.5
        truth = target > 0.5
        tp = (pred & truth).sum()
        fp = (pred & ~truth).sum()
        fn = (~pred & truth).sum()
        self.val_counts += torch.stack([tp, fp, fn, pred.numel() - tp - fp - fn]).double()

    def on_validation_epoch_end(self) -> None:
        if self.labels is not None:  # val_iou is the mIoU over the classes present (core/labels.py)
            from nailseg.core.labels import class_scores

            matrix = self.trainer.strategy.reduce(self.val_matrix.clone(), reduce_op="sum")
            result = class_scores(matrix.cpu().numpy(), self.labels.names)
            self.log("val_iou", result["miou"], prog_bar=True, sync_dist=False)
            self.log("val_dice", result["mdice"], prog_bar=False, sync_dist=False)
            return
        counts = self.trainer.strategy.reduce(self.val_counts.clone(), reduce_op="sum")
        result = scores(*counts.tolist())
        self.log("val_iou", result["iou"], prog_bar=True, sync_dist=False)
        self.log("val_dice", result["dice"], prog_bar=False, sync_dist=False)

    def on_train_start(self) -> None:
        """A resume restores each group's lr as the old schedule left it; a resume that trains to
        another ``trainer.max_epochs`` spans a new schedule, so its first epoch takes that schedule's lr."""
        self.apply_schedule()

    def apply_schedule(self) -> None:
        """Set each group's lr to the schedule's value for the coming epoch, as ``schedule_epochs``
        now sizes it. Lightning steps an epoch scheduler at the epoch's last batch, before the time
        budget re-plans in ``on_train_epoch_end``; without this the epoch after a trim would still
        run at the old plan's rate."""
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            if isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
                for group, base, factor in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                    group["lr"] = base * factor(sched.last_epoch)

    def configure_optimizers(self):
        o = self.exp.optim
        scale = encoder_lr_scale(o.encoder_lr_scale, self.exp.model.default_encoder_lr_scale)
        encoder_ids = {id(p) for p in self.model.encoder.parameters()}
        groups = [  # the decoder/head group last: its lr is the one metrics.jsonl records
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
        # read at every step: a time budget (TimeBudgetCallback) may size the schedule to fewer epochs
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda epoch: lr_factor(epoch, self.schedule_epochs, o.warmup_epochs, o.scheduler, o.poly_power))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
