"""The stack contract: what the engine hands a stack (:class:`TrainContext`), what a stack
implements (:class:`Stack`, :class:`InstanceStack`) and reports back (:class:`FitResult`, one
:class:`EpochRecord` per finished epoch). The engine (``engine.py``) runs any stack through it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nailseg.config import Experiment
from nailseg.core.budget import TimeBudget
from nailseg.core.data.discover import Pair
from nailseg.core.evaluate import Predictor
from nailseg.core.io import append_jsonl, write_json
from nailseg.core.runtime import drop_last
from nailseg.runs import PreparedData, RunDir
from nailseg.specs import StackSpec


@dataclass
class FitResult:
    """What a stack's fit loop reports; the engine adds the shared evaluation."""

    epochs: int
    global_step: int
    fit_time_s: float
    precision: str
    parameters: int
    device: str
    world_size: int = 1
    versions: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class EpochRecord:
    """One ``metrics.jsonl`` line: what every stack reports for each finished epoch (``None``
    where a stack cannot measure it, e.g. a validation loss). ``extras`` add stack-only keys
    (``val_segm_map``, group shares) beside these, never instead of them."""

    epoch: int
    step: int
    train_loss: float | None
    val_loss: float | None
    val_iou: float | None
    val_dice: float | None
    lr: float | None
    images_per_s: float | None
    epoch_time_s: float | None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> EpochRecord:
        """A stack's dict as a record; a missing key is a bug in that stack, named here."""
        missing = [k for k in EPOCH_KEYS if k not in record]
        if missing:
            raise ValueError(f"metrics record of epoch {record.get('epoch')} lacks {', '.join(missing)}")
        return cls(**{k: record[k] for k in EPOCH_KEYS},
                   extras={k: v for k, v in record.items() if k not in EPOCH_KEYS})

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {**{k: out[k] for k in EPOCH_KEYS}, **out["extras"]}


EPOCH_KEYS: tuple[str, ...] = tuple(f.name for f in fields(EpochRecord) if f.name != "extras")


@dataclass
class TrainContext:
    """Everything a stack's fit loop needs, prepared once by the engine."""

    exp: Experiment
    run: RunDir
    resume: bool
    data: PreparedData
    rank: int = 0
    budget: TimeBudget | None = None     # trainer.max_time's plan (the stack reports epochs to it)
    _epoch_times: list[float] = field(default_factory=list, repr=False)

    @property
    def max_epochs(self) -> int:
        """The epochs this fit runs: ``trainer.max_epochs``, or fewer where the time budget says so."""
        return self.budget.epochs if self.budget is not None else self.exp.trainer.max_epochs

    @property
    def train_pairs(self) -> list[Pair]:
        return self.data.pairs["train"]

    @property
    def val_pairs(self) -> list[Pair]:
        """Validation pairs; the training pairs when the split has no validation part."""
        return self.data.pairs["val"] or self.data.pairs["train"]

    @property
    def drop_last(self) -> bool:
        return drop_last(len(self.train_pairs), self.exp.trainer.batch_size)

    def grouping(self):
        """The balanced-sampling grouping of the training keys, or ``None`` when ``data.balance`` is off."""
        cfg = self.exp.data.balance
        if cfg is None:
            return None
        from nailseg.core.data.balance import make_grouping

        return make_grouping(self.data.split["train"], cfg, self.data.fg_share)

    @property
    def epoch_size(self) -> int:
        cfg = self.exp.data.balance
        return (cfg.epoch_size if cfg is not None and cfg.epoch_size else None) or len(self.train_pairs)

    # An epoch's line is the commit record of its checkpoint, never ahead of it: a stack stages the
    # line (a file, written atomically) before it writes the epoch's checkpoint, and commits it
    # (appends it to metrics.jsonl) after. A kill between the two leaves the staged line; the
    # resumed fit's first epoch tells whether that checkpoint was written (then the line is
    # committed) or not (then the epoch runs again and the stale line is dropped).
    @property
    def staged_line(self) -> Path:
        return self.run.path / "epoch.staged.json"

    def stage_epoch(self, record: EpochRecord | dict[str, Any]) -> None:
        """Hold the finished epoch's line until its checkpoint is written (rank 0 only)."""
        if self.rank == 0:
            record = record if isinstance(record, EpochRecord) else EpochRecord.from_dict(record)
            write_json(self.staged_line, record.as_dict())

    def commit_epoch(self) -> None:
        """The epoch's checkpoint is written: its staged line goes to ``metrics.jsonl``."""
        if self.rank == 0 and self.staged_line.is_file():
            self.log_epoch(json.loads(self.staged_line.read_text()))
            self.staged_line.unlink()

    def recover_epoch(self, first_epoch: int) -> None:
        """At the first epoch a (resumed) fit runs: a staged line whose epoch the checkpoint holds
        (``< first_epoch``) is committed; one whose checkpoint was never written is dropped."""
        if self.rank != 0 or not self.staged_line.is_file():
            return
        try:
            epoch = int(json.loads(self.staged_line.read_text())["epoch"])
        except (ValueError, KeyError, TypeError, OSError):
            epoch = first_epoch  # a torn or tampered file: nothing to recover
        if epoch < first_epoch:  # appended even when an older attempt left a line for it: the last line wins
            self.commit_epoch()
        self.staged_line.unlink(missing_ok=True)

    def budget_epoch(self, epochs_done: int, epoch_time_s: float) -> int | None:
        """Report a finished epoch to the time budget; the new number of epochs when the plan was
        trimmed (said in one line, and kept in ``budget.json`` for a resume), else ``None``."""
        if self.budget is None or self.rank != 0:
            return None
        was_planned = self.budget.planned
        line = self.budget.after_epoch(epochs_done, epoch_time_s)
        if self.budget.planned and (line is not None or not was_planned):  # a resume keeps this plan
            write_json(self.run.path / BUDGET_FILE, self.budget.as_dict())
        if line is None:
            return None
        print(line, file=sys.stderr, flush=True)
        return self.budget.epochs

    def log_epoch(self, record: EpochRecord | dict[str, Any]) -> None:
        """One ``metrics.jsonl`` line per finished epoch (rank 0 only), with every
        :data:`EPOCH_KEYS` key whichever stack wrote it."""
        if self.rank == 0:
            if not isinstance(record, EpochRecord):
                record = EpochRecord.from_dict(record)
            record = record.as_dict()
            append_jsonl(self.run.metrics, record)
            if not sys.stderr.isatty():  # a log file gets one plain line per epoch (a terminal has the bar)
                self._epoch_times.append(record.get("epoch_time_s") or 0.0)
                print(epoch_line(record, self.max_epochs, self._epoch_times), file=sys.stderr, flush=True)


BUDGET_FILE = "budget.json"  # trainer.max_time's plan, kept for a resume


def epoch_line(record: dict[str, Any], max_epochs: int, epoch_times: list[float]) -> str:
    """``epoch 3/8  train_loss 1.0123  val_iou 0.3830  lr 1.00e-04  2.1 s  ETA 0:00:10``: the ETA from
    this run's own epochs so far (the mean of the last five)."""
    epoch = int(record.get("epoch", 0)) + 1
    parts = [f"epoch {epoch}/{max_epochs}"]
    for key in ("train_loss", "val_loss", "val_iou", "val_segm_map"):
        if isinstance(record.get(key), (int, float)):
            parts.append(f"{key} {record[key]:.4f}")
    if isinstance(record.get("lr"), (int, float)):
        parts.append(f"lr {record['lr']:.2e}")
    recent = [t for t in epoch_times[-5:] if t]
    if recent:
        parts.append(f"{recent[-1]:.1f} s")
        left = max(0, max_epochs - epoch) * sum(recent) / len(recent)
        parts.append(f"ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}")
    return "  ".join(parts)


@runtime_checkable
class Stack(Protocol):
    """What a stack implements (``stacks/<name>/stack.py`` exposes one as ``STACK``)."""

    spec: StackSpec

    def preflight(self, exp: Experiment) -> None:
        """Refuse, before any file is written, what this machine or framework cannot run
        (unknown encoder, an accelerator that is not there)."""

    def resumable(self, run: RunDir) -> Path | None:
        """The verified checkpoint a resume continues from, or ``None`` when there is none.
        Raises ``ConfigError`` naming the file when it is corrupt or unsafe to load."""

    def fit(self, ctx: TrainContext) -> FitResult | None:
        """Train; ``None`` on non-zero ranks."""

    def load_predictor(self, run: RunDir, exp: Experiment, checkpoint: str = "best") -> Predictor:
        """RGB uint8 image -> foreground probability map at the image's size, from the best
        checkpoint (falling back to the last) or, with ``checkpoint="last"``, the last one."""

    def export(self, run: RunDir, exp: Experiment, fmt: str, out: Path | None) -> Path:
        """Write the model in one of ``spec.exports``."""


class InstanceStack(Stack, Protocol):
    """A stack with the ``instances`` capability (per-instance masks and COCO mAP)."""

    def load_instance_predictor(self, run: RunDir, exp: Experiment,
                                checkpoint: str = "best") -> Callable[[np.ndarray], tuple]:
        ...

    def evaluate_instances(self, run: RunDir, exp: Experiment, chosen: list[Pair], all_pairs: list[Pair],
                           checkpoint: str = "best") -> dict:
        """The instance scores of ``chosen`` (``nailseg eval`` prints and writes them)."""

    def instance_summary(self, run: RunDir, exp: Experiment, val_pairs: list[Pair], all_pairs: list[Pair]) -> dict:
        """The ``summary.json`` keys this stack adds for the validation split (e.g. ``val_segm_map``)."""
