"""One training engine for every stack.

:func:`run_training` does the same steps for Lightning, Keras and MMDetection: check the
stack can run the config, validate the data once, create and lock the run folder, fix the
split, hand the stack a :class:`TrainContext`, then score the best checkpoint with the
shared evaluation and write ``summary.json``. A stack supplies only what differs, through
the :class:`Stack` protocol: its fit loop, its predictor and its export formats.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from nailseg.config import Experiment
from nailseg.core.data.discover import Pair
from nailseg.core.evaluate import Predictor, semantic_summary
from nailseg.core.io import append_jsonl, write_json, write_yaml
from nailseg.core.data.split import load_split
from nailseg.runs import (RUN_DIR_ENV, PreparedData, RunDir, RunLock, check_data, check_metrics, create_run_dir,
                               dedupe_metrics, fix_split, load_fg_share, pairs_of, resolved_config, save_fg_share,
                               wait_for_split)
from nailseg.core.budget import TimeBudget
from nailseg.core.runtime import cpu_report, drop_last, global_rank
from nailseg.errors import ConfigError
from nailseg.registry import load_stack
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


BUDGET_FILE = "budget.json"


def time_budget(exp: Experiment, run: RunDir, resume: bool, started: float) -> TimeBudget | None:
    """``trainer.max_time``'s plan. A resumed run keeps the epochs its first attempt planned (its
    schedule was sized to them) and trims no further."""
    budget_s = exp.trainer.max_time_s
    if budget_s is None:
        return None
    budget = TimeBudget(budget_s, exp.trainer.max_epochs, started=started)
    saved = run.path / BUDGET_FILE
    if resume and saved.is_file():
        try:
            planned = int(json.loads(saved.read_text())["planned_epochs"])
        except (ValueError, KeyError, TypeError, OSError):
            raise ConfigError(f"{saved}: not a budget file nailseg wrote (planned_epochs missing); "
                              "remove it to plan the epochs again") from None
        budget.epochs = max(1, min(planned, exp.trainer.max_epochs))
        budget.fixed = True  # the plan stands; the budget is not counted again
    return budget


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


def stack_for(exp: Experiment) -> Stack:
    return load_stack(exp.stack)


def has_capability(exp: Experiment, capability: str) -> bool:
    return capability in exp.stack_spec.capabilities


def run_training(exp: Experiment, run: RunDir, *, resume: bool = False) -> dict | None:
    """Train ``exp`` into ``run`` on its stack; returns the summary (``None`` on non-zero ranks).

    Order matters for a refused run leaving nothing behind: the stack's preflight and the
    data check run before the run folder is created.
    """
    started, started_clock = time.time(), time.monotonic()
    stack = stack_for(exp)
    rank = global_rank()
    if rank != 0:  # a DDP worker joins the run rank 0 prepared (rank 0 holds the lock)
        split = wait_for_split(run)
        data = PreparedData(split, pairs_of(exp, split), load_fg_share(run))
        # the same plan object on every rank: each calls the budget hook, and takes rank 0's plan
        ctx = TrainContext(exp, run, resume, data, rank=rank, budget=time_budget(exp, run, resume, started_clock))
        result = stack.fit(ctx)
        return None if result is None else _finish(stack, ctx, result, started)

    stack.preflight(exp)
    if resume:
        RunLock(run).acquire().release()  # a run still training is "in use", whatever its checkpoints say
        if stack.resumable(run) is None:
            raise ConfigError(f"{run.path}: no checkpoint to resume from (training never finished an epoch); "
                              f"start a new run instead")
        check_metrics(run)
        load_split(run.split)  # a tampered split.json is refused before config.yaml is rewritten
    report = check_data(exp)
    if not resume:
        preflight_split(exp, report)  # folds, fractions, balance groups: refused before the folder exists
        create_run_dir(run)
    with RunLock(run):
        fg_share = {s.key: s.fg_share for s in report.stats}
        split = fix_split(exp, run, set(fg_share), resume=resume)
        if resume:  # only now, with the checkpoint verified and the lock held, is the config changed
            write_yaml(run.config, resolved_config(exp, run))
            dedupe_metrics(run)
        if exp.data.balance is not None and exp.data.balance.by == "fg_bins":
            save_fg_share(run, fg_share)  # DDP ranks read it instead of decoding the set again
        if exp.pretrain is not None:
            exp = pretrain_on_synthetic(exp, run)
        ctx = TrainContext(exp, run, resume, PreparedData(split, pairs_of(exp, split), fg_share), rank=0,
                           budget=time_budget(exp, run, resume, started_clock))
        previous = os.environ.get(RUN_DIR_ENV)
        os.environ[RUN_DIR_ENV] = str(run.path.resolve())  # DDP workers re-run the CLI: join this run
        try:
            result = stack.fit(ctx)
        finally:
            if previous is None:
                os.environ.pop(RUN_DIR_ENV, None)
            else:
                os.environ[RUN_DIR_ENV] = previous
        if result is None:
            return None
        return _finish(stack, ctx, result, started)


def preflight_split(exp: Experiment, report) -> None:
    """Make the split and the balance grouping once, in memory, so that a config they refuse
    (more folds than pairs, fractions that leave no training pair, a balance CSV or group that is
    not there) fails before anything is written."""
    from nailseg.core.data.split import split_for

    fg_share = {s.key: s.fg_share for s in report.stats}
    split = split_for(sorted(fg_share), exp.data.split, exp.data.seed)
    if exp.data.balance is not None:
        from nailseg.core.data.balance import make_grouping

        make_grouping(split["train"], exp.data.balance, fg_share)
    cache_dir = exp.data.cache_dir
    if cache_dir and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise ConfigError(f"data.cache_dir={cache_dir}: exists and is not a folder")


def pretrain_on_synthetic(exp: Experiment, run: RunDir) -> Experiment:
    """The ``pretrain`` stage: draw synthetic nails, train the same model on them, and return
    ``exp`` set to start from that pretraining's best weights (``model.init_from``).

    The pretraining depends only on the synthetic recipe and the model, never on the real data or
    its split, so it is kept under ``RUN_DIR/.pretrain/<hash of that recipe>/`` and reused by every
    later run that asks for the same one: the folds of a ``nailseg compare --folds K`` pay for it
    once. A lock serialises two runs that need the same pretraining; an interrupted one starts over.
    """
    sub_exp = _pretrain_experiment(exp)
    key = _pretrain_key(sub_exp)
    home = Path(exp.run.dir) / ".pretrain" / key
    home.mkdir(parents=True, exist_ok=True)
    sub_run = RunDir(home / "run")
    with RunLock(RunDir(home)):
        if sub_run.summary.exists() and sub_run.best_checkpoint.exists():
            print(f"pretraining: reusing {sub_run.path} (same synthetic recipe and model)", flush=True)
        else:
            _run_pretraining(exp, sub_exp, home, sub_run)
    write_json(run.path / "pretrain.json", {"init_from": str(sub_run.path.resolve()), "key": key,
                                           "pretrain": exp.pretrain.model_dump()})
    raw = exp.to_dict()
    raw["model"]["init_from"] = str(sub_run.path.resolve())
    return Experiment.model_validate({**raw, "pretrain": None})


def _pretrain_experiment(exp: Experiment) -> dict:
    """The config of the pretraining run, without its data folder and run folder."""
    p = exp.pretrain
    raw = exp.to_dict()
    raw.pop("pretrain")
    raw["data"].update(root="", image_size=p.image_size, split={"val": 0.1, "test": 0.0, "folds": None,
                                                               "fold": 0},
                       balance=None, crop_size=None)  # whole synthetic pictures at the pretraining side
    # max_time: the budget is the whole run's, pretraining included (the fine-tuning plan counts it)
    raw["trainer"].update(max_epochs=p.max_epochs, batch_size=p.batch_size or exp.trainer.batch_size, max_time=None)
    raw["optim"]["lr"] = p.lr or exp.optim.lr
    raw["logging"].update(predictions=0, tensorboard=False)
    raw["logging"]["wandb"]["enabled"] = False
    raw.pop("run")
    return raw


def _pretrain_key(sub_exp: dict) -> str:
    import hashlib

    from nailseg import __version__

    payload = json.dumps({"config": sub_exp, "version": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _run_pretraining(exp: Experiment, sub_exp: dict, home: Path, sub_run: RunDir) -> None:
    import shutil

    from nailseg.core.data.synth import SynthConfig, parse_size, synthesize

    p = exp.pretrain
    shutil.rmtree(sub_run.path, ignore_errors=True)  # an interrupted pretraining starts over
    data = home / "data"
    if not (data / "labels").is_dir() or len(list((data / "labels").iterdir())) != p.synth:
        shutil.rmtree(data, ignore_errors=True)
        width, height = parse_size(p.synth_size)
        synthesize(data, SynthConfig(n=p.synth, seed=p.seed, width=width, height=height), progress=False)
    raw = json.loads(json.dumps(sub_exp))
    raw["data"]["root"] = str(data.resolve())
    raw["run"] = {"dir": str(home), "name": "run"}
    print(f"pretraining on {p.synth} synthetic pictures for {p.max_epochs} epochs ({sub_run.path})", flush=True)
    run_training(Experiment.model_validate(raw), sub_run)


def _finish(stack: Stack, ctx: TrainContext, result: FitResult, started: float) -> dict | None:
    if ctx.rank != 0:
        return None
    # A resumed fit with no epoch left to run never reached an epoch start: a line staged before the
    # kill is then the last epoch's, whose checkpoint was written (else that epoch would have run).
    ctx.recover_epoch(sys.maxsize)
    run, exp = ctx.run, ctx.exp
    dedupe_metrics(run)
    common = semantic_summary(stack.load_predictor(run, exp), ctx.val_pairs, run, exp)
    summary: dict[str, Any] = {
        "stack": stack.spec.name, "pipeline": exp.pipeline, **exp.model.describe(),
        **common, "epochs": result.epochs, "global_step": result.global_step, "fit_time_s": result.fit_time_s,
        "wall_time_s": time.time() - started, "precision": result.precision, "parameters": result.parameters,
        "device": result.device, "world_size": result.world_size, "peak_memory_mb": peak_memory_mb(),
        "versions": result.versions, "normalization": exp.normalization.as_dict(), "cpu": cpu_report(),
    }
    if ctx.budget is not None:
        summary["budget"] = ctx.budget.as_dict()
    if "instances" in stack.spec.capabilities:
        summary.update(stack.instance_summary(run, exp, ctx.val_pairs,
                                              [p for part in ctx.data.pairs.values() for p in part]))
    summary.update(result.extras)
    write_json(run.summary, summary)
    return summary


def peak_memory_mb() -> float:
    """Peak resident memory of this process (and its finished children), in MiB."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def open_for_inference(run_dir: str | os.PathLike[str]):
    """(run, exp, stack) of a finished run folder."""
    from nailseg.runs import open_run

    run, exp = open_run(run_dir)
    return run, exp, stack_for(exp)
