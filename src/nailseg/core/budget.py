"""``trainer.max_time``: a wall-clock budget that sizes the epochs and the schedule, as Ultralytics'
``time=`` does, so that a CPU recipe keeps its time on a slower CPU by training fewer epochs.

Framework-free: a stack reports each finished epoch's time, and the plan says how many epochs fit.
The first epoch is measured but not trusted alone (it pays for warm-up: allocator, oneDNN kernels,
data cache); the plan is made after the second. Until the fifth it follows the pace both ways (the
second epoch can still pay for warm-up, and a plan sized to it would leave a third of the budget
unused; the schedule barely moves this early); after that it is trimmed only if epochs run slower.
The learning-rate schedule follows the planned epochs (the stack reads :attr:`TimeBudget.epochs`),
so a trimmed run still ends its cosine at the bottom instead of being cut off high.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | int | float) -> float:
    """``"20m"``, ``"1h30m"``, ``"90s"``, ``"1.5h"`` -> seconds. A bare number is refused: minutes
    or seconds would be a guess."""
    if isinstance(text, bool) or isinstance(text, (int, float)):
        raise ValueError(f"{text}: give a unit, e.g. 20m, 1h30m or 900s")
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smh])", str(text).strip().lower())
    if not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smh])", "", str(text).strip().lower()).strip():
        raise ValueError(f"{text!r}: a duration such as 20m, 1h30m or 900s")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"{text!r}: must be longer than 0 s")
    return seconds


@dataclass
class TimeBudget:
    """The plan for one training: ``epochs`` (<= ``max_epochs``) that fit in ``budget_s``, counted
    from ``started`` (the engine's start, so data checks and set-up count too)."""

    budget_s: float
    max_epochs: int
    started: float = field(default_factory=time.monotonic)
    reserve_share: float = 0.03          # the evaluation and summary after the last epoch
    epochs: int = 0
    fixed: bool = False                   # a resumed run keeps its first attempt's plan
    planned: bool = False                 # the plan was made (after the second epoch)
    epoch_times: list[float] = field(default_factory=list)
    settle_epochs: int = 5                # until then the plan may grow back (the pace still settles)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.epochs = self.epochs or self.max_epochs

    def after_epoch(self, epochs_done: int, epoch_time_s: float) -> str | None:
        """Record a finished epoch; return one line when the plan changed (``epochs`` then holds it)."""
        self.epoch_times.append(epoch_time_s)
        if self.fixed or (len(self.epoch_times) < 2 and self.max_epochs > 2):
            return None  # the first epoch alone overstates the rest
        self.planned = True
        measured = self.epoch_times[1:] if len(self.epoch_times) > 1 else self.epoch_times
        per_epoch = max(sum(measured[-3:]) / len(measured[-3:]), measured[-1])  # the recent pace, not the best
        elapsed = time.monotonic() - self.started
        left = self.budget_s * (1 - self.reserve_share) - elapsed
        fits = epochs_done + max(0, math.floor(left / per_epoch))
        planned = max(epochs_done, min(self.max_epochs, fits))
        if planned == self.epochs or (planned > self.epochs and epochs_done > self.settle_epochs):
            return None  # once settled, never lengthen a plan: the schedule already runs to it
        grown, self.epochs = planned > self.epochs, planned
        fit = (f"all {self.max_epochs} epochs fit" if planned == self.max_epochs
               else f"{self.max_epochs} epochs do not fit")
        line = (f"trainer.max_time {_clock(self.budget_s)}: {fit} at {per_epoch:.1f} s an epoch ({_clock(elapsed)} used "
                f"after {epochs_done}); training {planned} epochs{' after all' if grown else ''}, the learning-rate "
                f"schedule sized to them")
        self.notes.append(line)
        return line

    def as_dict(self) -> dict:
        return {"budget_s": self.budget_s, "max_epochs": self.max_epochs, "planned_epochs": self.epochs,
                "resumed_with_plan": self.fixed,
                "epoch_times_s": [round(t, 2) for t in self.epoch_times], "notes": self.notes}


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
