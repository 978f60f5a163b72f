"""The typed experiment config: one YAML file drives every stack.

``load_experiment(path, overrides)`` reads the YAML, applies dotted ``key=value`` overrides, and
validates the result. Unknown keys and wrong types fail before anything runs, with an error naming
the key (and the nearest valid key when it looks like a typo).

One module per section: ``data``, ``augment``, ``model`` (+ the ``families`` registry), ``optim``
(loss and optimiser), ``trainer``, ``run`` (logging, pretraining, the run folder); ``experiment``
joins them and refuses what a stack cannot do; ``yaml_io``, ``overrides``, ``messages`` and
``load`` read a file into an :class:`Experiment`.
"""

from nailseg.config.augment import AugmentConfig
from nailseg.config.data import MAX_IMAGE_SIDE, BalanceConfig, DataConfig, SplitConfig
from nailseg.config.experiment import Experiment
from nailseg.config.families import MODEL_CLASSES, ModelConfig, model_section, register_family
from nailseg.config.keys import config_keys
from nailseg.config.load import experiment_from_dict, load_experiment
from nailseg.config.model import (MASKRCNN_RESNETS, MaskrcnnModel, ModelBase, SegformerModel, SmModel, SmpModel,
                                  UpernetModel)
from nailseg.config.optim import LossConfig, OptimConfig
from nailseg.config.overrides import parse_overrides, set_dotted
from nailseg.config.run import LoggingConfig, PretrainConfig, RunConfig, WandbConfig
from nailseg.config.trainer import TrainerConfig
from nailseg.config.yaml_io import check_expansion, clip, preview, read_config_file, safe_yaml

__all__ = [
    "AugmentConfig", "BalanceConfig", "DataConfig", "Experiment", "LoggingConfig", "LossConfig", "MASKRCNN_RESNETS",
    "MAX_IMAGE_SIDE", "MODEL_CLASSES", "MaskrcnnModel", "ModelBase", "ModelConfig", "OptimConfig", "PretrainConfig",
    "RunConfig", "SegformerModel", "SmModel", "SmpModel", "SplitConfig", "TrainerConfig", "UpernetModel",
    "WandbConfig", "check_expansion", "clip", "config_keys", "experiment_from_dict", "load_experiment",
    "model_section", "parse_overrides", "preview", "read_config_file", "register_family", "safe_yaml", "set_dotted",
]
