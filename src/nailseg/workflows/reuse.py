"""Whether a run folder already holds a finished training of an experiment, so that re-running a
killed ``compare`` continues where it stopped instead of training again."""

from __future__ import annotations

from pathlib import Path

from nailseg.errors import ConfigError


def finished_run(run: Path, config: str, overrides: list[str]) -> bool:
    """Whether ``run`` holds a finished training of exactly this experiment (its ``config.yaml``
    equals the config with these overrides, the run folder's own name and the resolved data path
    aside), so re-running a killed ``compare`` continues where it stopped instead of starting over."""
    import yaml

    from nailseg.config import load_experiment

    if not (run / "summary.json").is_file() or not (run / "config.yaml").is_file():
        return False
    try:
        saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        wanted = load_experiment(config, overrides).to_dict()
    except (OSError, ValueError, yaml.YAMLError, ConfigError):
        return False
    if not isinstance(saved, dict) or not isinstance(saved.get("data"), dict):
        return False
    same_root = Path(str(saved["data"].get("root", ""))).resolve() == Path(wanted["data"]["root"]).resolve()
    for tree in (saved, wanted):
        tree.pop("run", None)
        tree["data"].pop("root", None)
    return same_root and saved == wanted
