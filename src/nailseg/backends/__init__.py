"""Training backends. Each module offers ``train(exp, run, resume)`` and ``load_predictor(run, exp)``.

Backends are imported only when used, so the CLI and the data tools stay light.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from nailseg.errors import MissingDependencyError

_BACKENDS = {
    # backend name -> (module, the extra that provides its dependencies, what it is)
    "lightning": ("nailseg.backends.lightning", "torch", "The PyTorch Lightning backend"),
    "keras": ("nailseg.backends.keras", "tf", "The Keras backend (model.family: sm)"),
    "mmdet": ("nailseg.backends.mmdet", "mmdet", "The MMDetection backend (model.family: maskrcnn)"),
}
_REQUIRED = {"lightning": ("torch", "lightning", "segmentation_models_pytorch"),
             "keras": ("tensorflow", "tf_keras", "segmentation_models"),
             "mmdet": ("torch", "mmengine", "mmcv", "mmdet", "pycocotools")}


def get_backend(name: str) -> ModuleType:
    module, extra, purpose = _BACKENDS[name]
    for dep in _REQUIRED.get(name, ()):
        if importlib.util.find_spec(dep) is None:
            raise MissingDependencyError(dep, extra, purpose)
    return importlib.import_module(module)
