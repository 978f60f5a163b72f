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
from pathlib import Path
from typing import Any

from nailseg.config import Experiment
from nailseg.contract import (BUDGET_FILE, EPOCH_KEYS, EpochRecord, FitResult, InstanceStack, Stack,  # noqa: F401  (re-exported)
                              TrainContext)
from nailseg.core.budget import TimeBudget
from nailseg.core.data.split import load_split
from nailseg.core.evaluate import semantic_summary
from nailseg.core.io import write_json, write_yaml
from nailseg.core.runtime import cpu_report, global_rank
from nailseg.errors import ConfigError
from nailseg.registry import load_stack
from nailseg.specs import STACKS
from nailseg.runs import (RUN_DIR_ENV, PreparedData, RunDir, RunLock, check_data, check_metrics, create_run_dir, dedupe_metrics,
                          resolve_class_weights,
                          fix_split, load_fg_share, pairs_of, resolved_config, save_fg_share, wait_for_split)


def time_budget(exp: Experiment, run: RunDir, resume: bool, started: float) -> TimeBudget | None:
    """``trainer.max_time``'s plan. A resumed run keeps the epochs its first attempt planned (its
    schedule was sized to them) and trims no further, unless the resume asks for another
    ``trainer.max_epochs``: that number is then trained, as it would be without a budget (the budget
    was the first attempt's, and is not counted again)."""
    budget_s = exp.trainer.max_time_s
    if budget_s is None:
        return None
    budget = TimeBudget(budget_s, exp.trainer.max_epochs, started=started)
    saved = run.path / BUDGET_FILE
    if resume and saved.is_file():
        try:
            plan = json.loads(saved.read_text())
            planned = int(plan["planned_epochs"])
            first_max = int(plan.get("max_epochs", exp.trainer.max_epochs))
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            raise ConfigError(f"{saved}: not a budget file nailseg wrote (planned_epochs missing); "
                              "remove it to plan the epochs again") from None
        budget.fixed = True  # the plan stands; the budget is not counted again
        if exp.trainer.max_epochs != first_max:
            budget.epochs = exp.trainer.max_epochs
            line = (f"trainer.max_time: the first attempt planned {planned} of {first_max} epochs; this resume asks "
                    f"for trainer.max_epochs={exp.trainer.max_epochs}, so it trains to epoch {budget.epochs}, "
                    "the learning-rate schedule sized to them")
            budget.notes.append(line)
            if global_rank() == 0:
                print(line, flush=True)
                # the plan from now on: a later resume without the override keeps it, and says nothing
                write_json(saved, {**plan, "max_epochs": exp.trainer.max_epochs, "planned_epochs": budget.epochs})
        else:
            budget.epochs = max(1, min(planned, exp.trainer.max_epochs))
    return budget


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
        data = PreparedData(split, pairs_of(exp, split), load_fg_share(run), resolve_class_weights(exp, run, None))
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
    fg_share = {s.key: s.fg_share for s in report.stats}
    planned = None
    if not resume:
        planned = plan_split(exp, fg_share)  # folds, fractions, balance groups: refused before the folder exists
        create_run_dir(run)
    with RunLock(run):
        split = fix_split(exp, run, set(fg_share), planned)
        _warn_absent_classes(report, split)
        if resume:  # only now, with the checkpoint verified and the lock held, is the config changed
            write_yaml(run.config, resolved_config(exp, run))
            dedupe_metrics(run)
        if exp.data.balance is not None and exp.data.balance.by == "fg_bins":
            save_fg_share(run, fg_share)  # DDP ranks read it instead of decoding the set again
        if exp.pretrain is not None:
            exp = pretrain_on_synthetic(exp, run)
        weights = resolve_class_weights(exp, run, report.class_totals(set(split["train"]))
                                        if report.class_names is not None else None)
        ctx = TrainContext(exp, run, resume, PreparedData(split, pairs_of(exp, split), fg_share, weights), rank=0,
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


def _warn_absent_classes(report, split: dict[str, list[str]]) -> None:
    """Many classes: a class with no pixel in the training or validation split is named, since its
    IoU will be missing (val) or never learnt (train)."""
    if report.class_names is None:
        return
    for part in ("train", "val"):
        absent = report.classes_absent(set(split.get(part, [])))
        if absent and split.get(part):
            print(f"warning: no pixel of {', '.join(absent)} in the {part} split ({len(split[part])} images)",
                  file=sys.stderr, flush=True)


def plan_split(exp: Experiment, fg_share: dict[str, float]) -> dict[str, list[str]]:
    """The split of a new run, made once (``fix_split`` writes it; nothing computes it again), with
    the balance grouping tried on it, so that a config they refuse (more folds than pairs,
    fractions that leave no training pair, a balance CSV or group that is not there) fails before
    anything is written."""
    from nailseg.core.data.split import split_for

    split = split_for(sorted(fg_share), exp.data.split, exp.data.seed)
    if exp.data.balance is not None:
        from nailseg.core.data.balance import make_grouping

        make_grouping(split["train"], exp.data.balance, fg_share)
    cache_dir = exp.data.cache_dir
    if cache_dir and Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        raise ConfigError(f"data.cache_dir={cache_dir}: exists and is not a folder")
    return split


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


def eject_experiment(exp: Experiment, out: Path, config_name: str) -> list[Path]:
    """``nailseg eject``: the stack writes ``exp`` as a plain script of its own framework into
    ``out``, on the split ``nailseg train`` would fix. The data and the config are checked first, the
    files are written into a sibling folder and moved into place last: a refusal leaves nothing."""
    import shutil
    import tempfile

    stack = stack_for(exp)
    if "eject" not in stack.spec.capabilities:
        able = [name for name, spec in STACKS.items() if "eject" in spec.capabilities]
        raise ConfigError(f"model.family={exp.model.family}: the {stack.spec.name} stack cannot eject yet "
                          f"({', '.join(able)} can)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out}: exists and is not an empty folder; eject never overwrites")
    stack.preflight(exp)
    report = check_data(exp)
    split = plan_split(exp, {s.key: s.fg_share for s in report.stats})
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        stack.eject(exp, pairs_of(exp, split), staging, config_name)
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(out.iterdir())


def open_for_inference(run_dir: str | os.PathLike[str]):
    """(run, exp, stack) of a finished run folder."""
    from nailseg.runs import open_run

    run, exp = open_run(run_dir)
    return run, exp, stack_for(exp)
