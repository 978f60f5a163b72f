"""``nailseg data balance``: the grouping a config's balanced sampling would use, shown before training.
It reads an experiment config, so it sits above the config (``core.data.balance`` stays a library)."""

from __future__ import annotations

import os

from nailseg.core.data.balance import balance_table, make_grouping
from nailseg.errors import ConfigError


def balance_report(source: str | os.PathLike[str], updates: dict, *, seed: int, progress: bool = True,
                   epochs: int = 10) -> dict:
    """What ``nailseg data balance`` shows: the grouping of a data folder (all pairs) or of an
    experiment config's train split, with ``updates`` (flags) over the config's settings, and each
    group's files, data share, target share and the share observed in ``epochs`` simulated epochs."""
    from pathlib import Path

    from nailseg.config import BalanceConfig, load_experiment
    from nailseg.core.data.check import check_dataset
    from nailseg.core.data.split import split_for

    source = Path(source)
    fractions = None
    if source.is_file():  # an experiment config: its data, its balance settings, its train split
        exp = load_experiment(source)
        root, cfg, seed = exp.data.root, exp.data.balance or BalanceConfig(), exp.trainer.seed
        fractions = (exp.data.split, exp.data.seed)
    else:
        root, cfg = source, BalanceConfig()
    try:
        cfg = BalanceConfig.model_validate({**cfg.model_dump(), **updates})
    except ValueError as err:
        first = err.errors()[0] if hasattr(err, "errors") else {"loc": (), "msg": str(err)}
        raise ConfigError(f"--{'-'.join(str(p) for p in first['loc']).replace('_', '-')}: {first['msg']}") from None
    report = check_dataset(root, progress=progress)
    report.raise_if_problems()
    fg_share = {s.key: s.fg_share for s in report.stats}
    keys = sorted(fg_share)
    if fractions is not None:
        keys = split_for(keys, *fractions)["train"]
    grouping = make_grouping(keys, cfg, fg_share)
    epoch_size = cfg.epoch_size or len(keys)
    return {"root": str(root), "by": cfg.by, "weights": cfg.weights, "epoch_size": epoch_size,
            "simulated_epochs": epochs, "groups": balance_table(grouping, epoch_size, seed, epochs=epochs)}
