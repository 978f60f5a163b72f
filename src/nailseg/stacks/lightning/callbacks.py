"""Lightning callbacks and plugins: kill-safe checkpoints and the per-epoch metrics line."""

from __future__ import annotations

import time
from pathlib import Path

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from nailseg.core.io import atomic_path, disk_errors_as_one_line
from nailseg.contract import EpochRecord


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary name and rename, so a kill never leaves a torn file.

    The temporary file is named like every other atomic write (``.NAME.PID.RANDOM.tmp``), so the
    next write to the folder removes one a killed process left; a full disk keeps the previous
    file, removes the temporary one and ends the run with one line."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        with disk_errors_as_one_line(path), atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class LastCheckpoint(Callback):
    """``last.ckpt`` at the end of every training epoch, whatever the monitored metric did, then
    ``committed()`` (the epoch's staged ``metrics.jsonl`` line is appended).

    Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when it also saves a
    top-k checkpoint, so with a monitor the "last" file was the best epoch: resume re-trained
    finished epochs and k-fold scores picked the held-out fold's best epoch. This callback runs
    after :class:`EpochRecorder` (it comes later in the callback list), which stages the epoch's
    line: the line is written only once its checkpoint is on the disk (``TrainContext.stage_epoch``)."""

    def __init__(self, path: Path, committed=None):
        self.path = Path(path)
        self.committed = committed

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        # A save, not a load: weights_only=False here means "write the optimizer and loop state too",
        # so resume continues exactly. Nothing is unpickled; loading goes through
        # checkpoints.safe_load (torch.load with weights_only=True).
        trainer.save_checkpoint(str(self.path), weights_only=False)
        if self.committed is not None and trainer.is_global_zero:
            self.committed()


class EpochRecorder(Callback):
    """One ``metrics.jsonl`` line per finished epoch: staged through the engine's
    ``TrainContext.stage_epoch`` and committed by :class:`LastCheckpoint` after the checkpoint."""

    def __init__(self, ctx, grouping=None, sampler=None):
        self.ctx = ctx
        self.grouping, self.sampler = grouping, sampler
        self._t0 = self._train_end = 0.0
        self._seen = 0
        self._started = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not self._started:  # a line staged before a kill: committed if its checkpoint was written
            self._started = True
            if trainer.is_global_zero:
                self.ctx.recover_epoch(trainer.current_epoch)
        self._t0, self._seen, self._train_end = time.perf_counter(), 0, 0.0
        self._lr = trainer.optimizers[0].param_groups[-1]["lr"]  # the decoder's (last group)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._seen += batch["image"].shape[0] * trainer.world_size  # approximate when the last batches differ

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and not self._train_end:
            self._train_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Every rank reads the metrics here, so their DDP sync happens at the same point on every rank
        # (a rank that skipped it would sync later, inside LastCheckpoint's barrier: a deadlock).
        metrics = trainer.callback_metrics
        if not trainer.is_global_zero:
            return
        now = time.perf_counter()
        train_time = (self._train_end or now) - self._t0
        m = {k: float(v) for k, v in metrics.items() if v.numel() == 1}
        record = EpochRecord(
            epoch=trainer.current_epoch, step=trainer.global_step, train_loss=m.get("train_loss_epoch"),
            val_loss=m.get("val_loss"), val_iou=m.get("val_iou"), val_dice=m.get("val_dice"), lr=self._lr,
            images_per_s=self._seen / train_time if train_time > 0 else None, epoch_time_s=now - self._t0,
        )
        if self.sampler is not None:  # what the balanced sampler really drew this epoch
            record.extras["group_share"] = self.grouping.shares(self.sampler.full_stream(trainer.current_epoch))
        self.ctx.stage_epoch(record)


class TimeBudgetCallback(Callback):
    """``trainer.max_time``: each finished epoch's time goes to the engine's plan
    (``TrainContext.budget_epoch``); when it trims, the fit loop stops at the planned epoch and the
    module's lr schedule spans it. Every rank takes rank 0's plan, so DDP ranks stop together."""

    def __init__(self, ctx):
        self.ctx = ctx
        self._t0 = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        planned = self.ctx.budget_epoch(trainer.current_epoch + 1, time.perf_counter() - self._t0)
        planned = trainer.strategy.broadcast(planned, src=0)
        if planned is not None:
            trainer.fit_loop.max_epochs = planned
            pl_module.schedule_epochs = planned
            pl_module.apply_schedule()  # the next epoch already runs on the new plan
