"""One tiny trained run, exported to ONNX once for every deploy test, and removed after them.

It trains on the colour-coded pairs, which a small network learns in a few epochs: its masks are
confident, as a real model's are, so int8 and float16 copies are judged on a model that has learned
(a barely trained one sits at its threshold everywhere, where any rounding flips pixels)."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_TRAIN, run_cli, scratch


@pytest.fixture(scope="package")
def onnx_run(colour_data, tmp_path_factory) -> Iterator[Path]:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    with scratch(tmp_path_factory, "deploy-runs") as runs:
        run_cli("train", str(REPO / "configs" / "demo-cpu.yaml"), f"data.root={colour_data}", *TINY_TRAIN,
                # 10 epochs: at 6, one run of four on one thread per xdist worker learned too little
                # (fp32 mask IoU 0.18 on its val photos) for any int8 setting to keep its masks
                "trainer.max_epochs=10", "optim.lr=0.003", f"run.dir={runs}", "run.name=tiny",
                "logging.tensorboard=false", check=True)
        run = runs / "tiny"
        proc = run_cli("export", str(run), "--format", "onnx", check=True)
        assert proc.stdout.strip().endswith("model.onnx")
        assert json.loads((run / "export.json").read_text())["format"] == "onnx"
        yield run
