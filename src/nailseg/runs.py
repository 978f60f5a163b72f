"""Run folders: everything one training run made, in one place.

``runs/<name>/`` holds the resolved ``config.yaml``, ``split.json``, ``checkpoints/``
(``last.ckpt``, ``best.ckpt``), ``metrics.jsonl`` (one line per epoch), TensorBoard
events under ``tb/``, ``summary.json``, ``eval.json`` and ``predictions/`` overlays.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from nailseg.data.check import check_dataset
from nailseg.data.split import load_split, make_split, save_split
from nailseg.errors import ConfigError, DataError
from nailseg.experiment import Experiment, experiment_from_dict
from nailseg.io import write_yaml

RUN_DIR_ENV = "NAILSEG_RUN_DIR"  # set by rank 0 so that DDP workers join the same run


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def split(self) -> Path:
        return self.path / "split.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def eval(self) -> Path:
        return self.path / "eval.json"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions"

    def inference_checkpoint(self) -> Path:
        """The best checkpoint when there is one, else the last."""
        candidates = (self.best_checkpoint, self.last_checkpoint,  # Lightning
                      self.checkpoints / "best.weights.h5", self.checkpoints / "last.weights.h5",  # Keras
                      self.checkpoints / "best.pth", self.checkpoints / "last.pth")  # MMDetection
        for path in candidates:
            if path.exists():
                return path
        raise ConfigError(f"{self.path}: no checkpoint in {self.checkpoints} (did training finish an epoch?)")


def global_rank() -> int:
    """This process's rank from the launcher's environment (0 when not distributed)."""
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def wait_for_split(run: RunDir, timeout_s: float = 600.0) -> dict[str, list[str]]:
    """Non-zero ranks wait for rank 0 to validate the data and write ``split.json``."""
    deadline = time.monotonic() + timeout_s
    while not run.split.exists():
        if time.monotonic() > deadline:
            raise DataError(f"{run.split}: rank 0 did not write the split within {timeout_s:.0f} s")
        time.sleep(0.5)
    return load_split(run.split)


def open_run(path: str | os.PathLike[str]) -> tuple[RunDir, Experiment]:
    """Open an existing run folder and its resolved config."""
    import yaml

    run = RunDir(Path(path))
    if not run.config.exists():
        raise ConfigError(f"{run.path}: not a run folder (no config.yaml)")
    raw = yaml.safe_load(run.config.read_text(encoding="utf-8")) or {}
    return run, experiment_from_dict(raw, str(run.config))


def resume_run(path: str | os.PathLike[str], overrides: list[str]) -> tuple[RunDir, Experiment]:
    """Open a run to continue it; overrides (e.g. more epochs) are saved into its config."""
    from nailseg.experiment import parse_overrides, set_dotted

    run, exp = open_run(path)
    if overrides:
        raw = exp.to_dict()
        for key, value in parse_overrides(overrides):
            set_dotted(raw, key, value)
        exp = experiment_from_dict(raw, "command line")
        if global_rank() == 0 and RUN_DIR_ENV not in os.environ:
            write_yaml(run.config, exp.to_dict())
    return run, exp


def new_run(exp: Experiment, config_path: str | os.PathLike[str] | None) -> RunDir:
    """Choose the run folder (``run.dir/run.name``), refusing to overwrite a run."""
    joined = os.environ.get(RUN_DIR_ENV)
    if joined:  # a DDP worker started by Lightning: use rank 0's folder
        return RunDir(Path(joined))
    stem = Path(config_path).stem if config_path else "run"
    if global_rank() > 0:  # started by torchrun or a cluster launcher
        if not exp.run.name:
            raise ConfigError("run.name: must be set when several processes are launched "
                              "(torchrun, SLURM) so that every rank writes to the same run folder")
        return RunDir(Path(exp.run.dir) / exp.run.name)
    name = exp.run.name or f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(exp.run.dir) / name
    if path.exists() and any(path.iterdir()):
        raise ConfigError(
            f"{path}: run folder already exists; continue it with 'nailseg train --resume {path}' "
            "or choose another run.name"
        )
    return RunDir(path)


def prepare_run(exp: Experiment, run: RunDir, *, resume: bool) -> tuple[dict[str, list[str]], dict[str, float]]:
    """Validate the data (refusing bad input before any compute) and fix the split.

    A new run writes ``config.yaml`` and ``split.json``; a resumed run reuses its split.
    Returns the split and each pair's foreground share (for balanced sampling).
    """
    report = check_dataset(exp.data.root)
    report.raise_if_problems()
    fg_share = {s.key: s.fg_share for s in report.stats}
    return _fix_split(exp, run, set(fg_share), resume=resume), fg_share


def _fix_split(exp: Experiment, run: RunDir, keys: set[str], *, resume: bool) -> dict[str, list[str]]:
    if resume or run.split.exists():
        split = load_split(run.split)
        missing = sorted(k for part in split.values() for k in part if k not in keys)
        if missing:
            raise DataError([f"{run.split}: '{k}' is in the split but not in {exp.data.root}" for k in missing[:20]])
        return split
    split = make_split(sorted(keys), exp.data.split.val, exp.data.split.test, exp.data.seed)
    run.path.mkdir(parents=True, exist_ok=True)
    resolved = exp.to_dict()
    resolved["data"]["root"] = str(Path(exp.data.root).resolve())
    resolved["run"]["name"] = run.path.name
    write_yaml(run.config, resolved)
    save_split(run.split, split, seed=exp.data.seed, val=exp.data.split.val, test=exp.data.split.test,
               data_root=resolved["data"]["root"])
    return split


def dedupe_metrics(run: RunDir) -> None:
    """Keep the last line of each epoch in ``metrics.jsonl``: an epoch re-run after a kill
    replaces the line its first attempt wrote."""
    import json

    from nailseg.io import read_jsonl, write_text

    by_epoch = {r["epoch"]: r for r in read_jsonl(run.metrics)}
    write_text(run.metrics, "".join(json.dumps(by_epoch[e]) + "\n" for e in sorted(by_epoch)))
