"""One tiny trained run, exported to ONNX once for every deploy test, and removed after them."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_TRAIN, run_cli, scratch


@pytest.fixture(scope="package")
def onnx_run(synth_data, tmp_path_factory) -> Iterator[Path]:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    with scratch(tmp_path_factory, "deploy-runs") as runs:
        run_cli("train", str(REPO / "configs" / "demo-cpu.yaml"), f"data.root={synth_data}", *TINY_TRAIN,
                "trainer.max_epochs=2", f"run.dir={runs}", "run.name=tiny", "logging.tensorboard=false", check=True)
        run = runs / "tiny"
        proc = run_cli("export", str(run), "--format", "onnx", check=True)
        assert proc.stdout.strip().endswith("model.onnx")
        assert json.loads((run / "export.json").read_text())["format"] == "onnx"
        yield run
