"""Run folders: everything one training run made, in one place.

``runs/<name>/`` holds the resolved ``config.yaml``, ``split.json``, ``checkpoints/``,
``metrics.jsonl`` (one line per epoch), TensorBoard events under ``tb/``, ``summary.json``,
``eval.json`` and ``predictions/`` overlays. A training process holds an exclusive lock
(``.lock``) on its folder from start to exit, so two processes never interleave one run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from nailseg.config import Experiment, experiment_from_dict, parse_overrides, read_config_file, set_dotted
from nailseg.core.data.check import check_dataset
from nailseg.core.data.discover import Pair, find_pairs
from nailseg.core.data.split import load_split, save_split
from nailseg.core.io import read_jsonl, write_json, write_text, write_yaml
from nailseg.core.runtime import global_rank
from nailseg.errors import ConfigError, DataError

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
    def fg_share(self) -> Path:
        return self.path / "fg_share.json"

    @property
    def class_weights(self) -> Path:
        return self.path / "class_weights.json"

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
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def eval(self) -> Path:
        return self.path / "eval.json"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions"

    @property
    def lock_file(self) -> Path:
        return self.path / ".lock"


class RunLock:
    """An exclusive ``flock`` on the run folder, held by rank 0 for the whole training.

    The kernel drops it when the process exits, however it exits, so a crash never leaves a
    stale lock. A second process gets a one-line error naming the run and the holder's pid.
    """

    def __init__(self, run: RunDir):
        self.run = run
        self._fh = None

    def acquire(self) -> RunLock:
        import fcntl
        import stat

        path = self.run.lock_file
        try:  # O_NOFOLLOW: a symlinked .lock must never truncate the file it points to
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        except OSError as err:
            kind = ("a symbolic link" if path.is_symlink() else "a folder" if path.is_dir()
                    else err.strerror or "unusable")
            raise ConfigError(f"{path}: the run's lock file is {kind}, not a regular file; remove it if no nailseg "
                              "process uses this run") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConfigError(f"{path}: the run's lock file is not a regular file; remove it if no nailseg "
                              "process uses this run")
        os.set_blocking(fd, True)
        fh = os.fdopen(fd, "r+", encoding="utf-8", errors="replace")  # held until release
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ConfigError(f"{self.run.path}: run is in use by another nailseg process (pid {holder}); "
                              "wait for it to finish, or choose another run.name") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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
    run = RunDir(Path(path))
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError(f"{run.path}: a file, not a run folder (give the folder nailseg train wrote)")
    if not run.path.is_dir():
        raise ConfigError(f"{run.path}: no such run folder")
    if not run.config.exists():
        raise ConfigError(f"{run.path}: not a run folder (no config.yaml)")
    return run, experiment_from_dict(read_config_file(run.config), str(run.config))


def resume_run(path: str | os.PathLike[str], overrides: list[str]) -> tuple[RunDir, Experiment]:
    """Open a run to continue it with overrides applied in memory only.

    Overrides that change the model are refused (the checkpoint holds that model); the
    config is written back by the engine only once training really resumes.
    """
    run, exp = open_run(path)
    if not overrides:
        return run, exp
    pairs = parse_overrides(overrides)
    model_keys = [k for k, _ in pairs if k == "model" or k.startswith("model.")]
    if model_keys:
        raise ConfigError(f"--resume: {', '.join(model_keys)} would change the model the checkpoint holds; "
                          "start a new run (model.init_from can start it from this run's weights)")
    raw = exp.to_dict()
    for key, value in pairs:
        set_dotted(raw, key, value)
    return run, experiment_from_dict(raw, "command line")


def choose_run_dir(exp: Experiment, config_path: str | os.PathLike[str] | None) -> RunDir:
    """Where a new run goes (``run.dir/run.name``); nothing is created yet."""
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
    if name in (".", "..") or "/" in name or "\\" in name:
        raise ConfigError(f"run.name={name!r}: must be a plain folder name")
    path = Path(exp.run.dir) / name
    for folder in (Path(exp.run.dir), *Path(exp.run.dir).parents):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"run.dir={exp.run.dir}: {folder} is a file, not a folder")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()):
        raise ConfigError(f"{path}: run folder already exists; continue it with 'nailseg train --resume {path}' "
                          "or choose another run.name")
    return RunDir(path)


def create_run_dir(run: RunDir) -> None:
    """Create the folder atomically: of two processes racing for one name, one gets it."""
    run.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(run.path)
    except FileExistsError:
        if any(p.name != ".lock" for p in run.path.iterdir()):
            raise ConfigError(f"{run.path}: run folder already exists (another process created it); "
                              "choose another run.name") from None


def load_with_fallback(run: RunDir, checkpoint: str, best: Path, last: Path, load):
    """The best -> last rule every stack's inference follows: ``checkpoint="best"`` tries ``best``,
    then ``last``; ``"last"`` tries ``last`` only. ``load(path)`` raises ``ConfigError`` for a file
    it cannot use (corrupt, unsafe, the wrong model); the next one is tried with a warning, and when
    none loads the error names every file and why."""
    import sys

    order = (best, last) if checkpoint == "best" else (last,)
    candidates = [p for p in order if p.exists()]
    if not candidates:
        raise ConfigError(f"{run.path}: no checkpoint in {last.parent} (did training finish an epoch?)")
    errors: list[str] = []
    for path in candidates:
        try:
            loaded = load(path)
        except ConfigError as err:
            errors += err.lines
            continue
        if errors:
            print(f"warning: {errors[0]}; using {path.name} instead", file=sys.stderr)
        return loaded
    raise ConfigError(errors)


@dataclass
class PreparedData:
    """What every stack trains on: the split and its pairs, decoded once by rank 0's check."""

    split: dict[str, list[str]]
    pairs: dict[str, list[Pair]]
    fg_share: dict[str, float] | None = field(default=None)
    class_weights: list[float] | None = field(default=None)  # loss.class_weights, resolved to numbers


def check_data(exp: Experiment):
    """Decode every pair once and refuse bad input before anything is written."""
    report = check_dataset(exp.data.root, labels=exp.data.label_spec)
    report.raise_if_problems()
    return report


def fix_split(exp: Experiment, run: RunDir, keys: set[str], planned: dict[str, list[str]] | None
              ) -> dict[str, list[str]]:
    """A new run writes ``config.yaml`` and its ``planned`` split (``split.json``); a resumed run
    (``planned`` is None) reuses the split it wrote."""
    if planned is None or run.split.exists():
        split = load_split(run.split)
        missing = sorted(k for part in split.values() for k in part if k not in keys)
        if missing:
            raise DataError([f"{run.split}: '{k}' is in the split but not in {exp.data.root}" for k in missing[:20]])
        return split
    split = planned
    resolved = resolved_config(exp, run)
    write_yaml(run.config, resolved)
    save_split(run.split, split, seed=exp.data.seed, val=exp.data.split.val, test=exp.data.split.test,
               folds=exp.data.split.folds, fold=exp.data.split.fold, data_root=resolved["data"]["root"])
    return split


def resolved_config(exp: Experiment, run: RunDir) -> dict:
    resolved = exp.to_dict()
    resolved["data"]["root"] = str(Path(exp.data.root).resolve())
    resolved["run"]["name"] = run.path.name
    return resolved


def pairs_of(exp: Experiment, split: dict[str, list[str]]) -> dict[str, list[Pair]]:
    """The split's keys as pairs (listing files only: no decoding)."""
    by_key = {p.key: p for p in find_pairs(exp.data.root)[0]}
    missing = [k for part in split.values() for k in part if k not in by_key]
    if missing:
        raise DataError([f"'{k}' is in the split but not in {exp.data.root}" for k in missing[:20]])
    return {name: [by_key[k] for k in keys] for name, keys in split.items()}


def save_fg_share(run: RunDir, fg_share: dict[str, float]) -> None:
    write_json(run.fg_share, fg_share)


def load_fg_share(run: RunDir) -> dict[str, float] | None:
    if not run.fg_share.exists():
        return None
    return json.loads(run.fg_share.read_text(encoding="utf-8"))


def resolve_class_weights(exp, run: RunDir, train_pixels: dict[str, int] | None) -> list[float] | None:
    """``loss.class_weights`` as numbers: a rule is computed once, from the training split's pixels
    of each class, and kept in ``class_weights.json``; a resume and every DDP rank read that file,
    so the weights never change under a run. ``train_pixels`` is None on a rank that only reads."""
    rule = exp.loss.class_weights
    if rule == "none" or exp.data.classes is None:
        return None
    if isinstance(rule, list):
        return [float(w) for w in rule]
    if run.class_weights.is_file():
        try:
            saved = json.loads(run.class_weights.read_text(encoding="utf-8"))
            weights = [float(w) for w in saved["weights"].values()]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ConfigError(f"{run.class_weights}: unreadable class weights ({err})") from None
        if saved.get("rule") == rule and len(weights) == len(exp.data.classes):
            return weights
    if train_pixels is None:
        raise ConfigError(f"{run.class_weights}: missing (rank 0 writes it before training starts)")
    from nailseg.core.labels import class_weights

    weights = class_weights(rule, list(train_pixels.values()))
    write_json(run.class_weights, {"rule": rule, "weights": dict(zip(train_pixels, weights)),
                                   "train_pixels": train_pixels})
    return weights


def check_metrics(run: RunDir) -> None:
    """Refuse a ``metrics.jsonl`` that resume could not extend: lines that are not objects with a
    whole-number epoch, or bytes that are not UTF-8 (a line cut by a kill is fine: it is dropped)."""
    if not run.metrics.exists():
        return
    if not run.metrics.is_file():
        raise ConfigError(f"{run.metrics}: not a regular file")
    try:
        text = run.metrics.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{run.metrics}: not UTF-8 text (edited or damaged); move it away to resume") from None
    lines = [x for x in text.splitlines() if x.strip()]
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # the last line, cut by a kill
            raise ConfigError(f"{run.metrics}: line {number} is not JSON") from None
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"{run.metrics}: line {number} has no whole-number epoch (got {str(epoch)[:40]})")


def dedupe_metrics(run: RunDir) -> None:
    """Keep the last line of each epoch in ``metrics.jsonl``: an epoch re-run after a kill
    replaces the line its first attempt wrote."""
    by_epoch = {r["epoch"]: r for r in read_jsonl(run.metrics) if isinstance(r, dict) and "epoch" in r}
    write_text(run.metrics, "".join(json.dumps(by_epoch[e]) + "\n" for e in sorted(by_epoch)))
