"""The mmengine hooks the Mask R-CNN stack registers on its Runner: one ``metrics.jsonl`` line per
epoch of the iteration loop, ``trainer.max_time``'s plan, and a resume's schedule fitted to its loop."""

from __future__ import annotations

import math
import time

import numpy as np

from nailseg.contract import EpochRecord, TrainContext


def recorder_hook(log_epoch, iters_per_epoch: int, batch_size: int):
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
            log_epoch(EpochRecord(
                epoch=runner.iter // iters_per_epoch - 1, step=runner.iter,
                train_loss=float(np.mean(self.losses)) if self.losses else None,
                val_loss=None, val_iou=None, val_dice=None,  # scored by COCO mAP per epoch; IoU once, at the end
                lr=max(float(x) for x in runner.optim_wrapper.get_lr()["lr"]),  # the head's (unscaled) lr
                images_per_s=iters * batch_size * runner.world_size / self.train_time if self.train_time else None,
                epoch_time_s=now - self.t0,
                extras={"val_segm_map": metrics.get("coco/segm_mAP"), "val_bbox_map": metrics.get("coco/bbox_mAP"),
                        "val_segm_map_50": metrics.get("coco/segm_mAP_50"),
                        "val_bbox_map_50": metrics.get("coco/bbox_mAP_50")},
            ))
            self.losses, self.t0, self.train_time = [], now, 0.0

    return RunRecorder()


def budget_hook(ctx: TrainContext, iters_per_epoch: int):
    from mmengine.hooks import Hook

    class TimeBudgetHook(Hook):
        """``trainer.max_time`` on mmengine's iteration loop: each finished epoch's time (from the
        previous one's end, so its validation and checkpoint count) goes to the engine's plan
        (``TrainContext.budget_epoch``); when it trims, the loop's ``max_iters`` and the cosine's (or
        poly's) span shrink to the planned epochs, so the run still ends its schedule at the bottom.
        Before the scheduler and checkpoint hooks, so the epoch's checkpoint holds the new span.
        Every rank takes rank 0's plan."""

        priority = "NORMAL"

        def before_train(self, runner) -> None:
            self._since = time.perf_counter()

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            if (runner.iter + 1) % iters_per_epoch:
                return
            now = time.perf_counter()
            planned = ctx.budget_epoch((runner.iter + 1) // iters_per_epoch, now - self._since)
            self._since = now
            if runner.world_size > 1:
                from mmengine.dist import broadcast_object_list

                shared = [planned]
                broadcast_object_list(shared, src=0)
                planned = shared[0]
            if planned is not None:
                resize_schedule(runner, planned * iters_per_epoch)

    return TimeBudgetHook()


def resume_hook():
    from mmengine.hooks import Hook

    class ResumedScheduleHook(Hook):
        """A resume's schedulers are the checkpoint's, sized to the first attempt's epochs (or to a
        plan made after that checkpoint was saved): fitted to this attempt's loop, so a resume that
        asks for more epochs (or keeps ``budget.json``'s plan) runs them on their own schedule."""

        priority = "NORMAL"

        def before_train(self, runner) -> None:  # after mmengine has loaded the checkpoint
            resize_schedule(runner, runner.max_iters)

    return ResumedScheduleHook()


def resize_schedule(runner, max_iters: int) -> None:
    """End mmengine's loop at ``max_iters`` and fit the decaying scheduler (cosine or poly) to it, its
    ``end`` one past the last iteration as ``config.param_schedulers`` builds it. mmengine's
    schedulers are chainable (each step scales the current lr), so the current lr is first set to
    the new curve's value at the step reached, as Lightning's closed-form schedule does: later steps
    then follow the new curve to its bottom, and a longer resumed run climbs back onto it. A
    scheduler that has not started (the warm-up runs) starts on the new curve by itself."""
    from mmengine.optim.scheduler import CosineAnnealingParamScheduler, PolyParamScheduler

    runner.train_loop._max_iters = max_iters
    for scheduler in runner.param_schedulers:
        if max_iters <= scheduler.begin:
            continue
        span = max_iters - scheduler.begin
        if isinstance(scheduler, CosineAnnealingParamScheduler):
            scheduler.end, scheduler.T_max = max_iters + 1, span
            share = (1 + math.cos(math.pi * scheduler.last_step / span)) / 2
        elif isinstance(scheduler, PolyParamScheduler):
            scheduler.end, scheduler.total_iters = max_iters + 1, span
            share = max(0.0, 1 - scheduler.last_step / span) ** scheduler.power
        else:
            continue
        if scheduler.last_step < 0:
            continue
        ratio = getattr(scheduler, "eta_min_ratio", None)
        for base, group in zip(scheduler.base_values, scheduler.optimizer.param_groups):
            bottom = base * ratio if ratio is not None else scheduler.eta_min
            group[scheduler.param_name] = bottom + (base - bottom) * share
