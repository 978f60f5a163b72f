"""Write an offline ImageNet encoder's tensors as numpy arrays, named as timm's ``features_only``
model names them, for a stack that cannot import torch (the Keras stack: TensorFlow and torch never
share a process). The provider file goes through the same verified converter as the torch stacks'.

    python -m nailseg.stacks.lightning.encoder_arrays tu-tf_efficientnet_lite0 OUT.npz

Prints one JSON line: what ``summary.json`` records about the weights (provider, version, SHA-256).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from nailseg.core.weights import provider_for
from nailseg.errors import ConfigError


def encoder_arrays(encoder: str) -> tuple[dict[str, np.ndarray], dict]:
    import timm

    from nailseg.stacks._torch.weights import load_provider_weights

    provider = provider_for(encoder)
    if provider is None or not encoder.startswith("tu-"):
        raise ConfigError(f"{encoder}: no offline ImageNet weights for it (nailseg weights list)")
    model = timm.create_model(encoder[3:], features_only=True, pretrained=False)
    record = load_provider_weights(model, provider)
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    return arrays, record


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m nailseg.stacks.lightning.encoder_arrays ENCODER OUT.npz", file=sys.stderr)
        return 2
    try:
        arrays, record = encoder_arrays(args[0])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args[1])
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(out)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
