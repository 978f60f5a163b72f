import json
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from nailseg.errors import ConfigError  # noqa: E402
from nailseg.config import SegformerModel as ModelConfig  # noqa: E402
from nailseg.stacks.lightning.segformer import build_segformer  # noqa: E402
from nailseg.stacks.lightning.models import build_loss, build_model, foreground_probability  # noqa: E402
from tests.conftest import REPO, run_cli  # noqa: E402


def test_logits_at_full_resolution():
    model = build_model(ModelConfig(family="segformer", variant="b0")).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 1, 64, 96)
    with torch.no_grad():
        raw = model.hf(pixel_values=torch.randn(1, 3, 64, 96)).logits
    assert raw.shape == (1, 1, 16, 24)  # SegFormer predicts at 1/4 resolution


@pytest.mark.parametrize("variant,millions", [("b0", 3.7), ("b1", 13.7), ("b2", 27.4)])
def test_published_variant_sizes(variant, millions):
    model = build_segformer(ModelConfig(family="segformer", variant=variant))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(millions, rel=0.06)


def test_softmax_two_classes():
    model = build_model(ModelConfig(family="segformer", variant="b0", classes=2)).eval()
    logits = model(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 2, 64, 64)
    prob = foreground_probability(logits)
    assert prob.shape == (1, 1, 64, 64) and float(prob.min()) >= 0 and float(prob.max()) <= 1
    from nailseg.config import LossConfig

    loss = build_loss(LossConfig(), classes=2)(logits, torch.randint(0, 2, (1, 1, 64, 64)).float())
    loss.backward()
    assert torch.isfinite(loss)


def test_offline_hub_id_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HOME", "/nonexistent-nailseg-cache")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="nvidia/mit-b0.*offline"):
        build_segformer(ModelConfig(family="segformer", pretrained="nvidia/mit-b0"))
    assert time.monotonic() - started < 30  # no long retries


def test_local_folder_round_trip(tmp_path):
    model = build_segformer(ModelConfig(family="segformer", variant="b0"))
    model.hf.save_pretrained(tmp_path / "saved")
    again = build_segformer(ModelConfig(family="segformer", pretrained=str(tmp_path / "saved"), classes=2))
    assert again.hf.config.num_labels == 2  # head replaced for our labels
    a, b = model.encoder.state_dict(), again.encoder.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # encoder loaded from disk


@pytest.mark.slow
def test_train_export_and_plain_transformers_round_trip(synth_data, tmp_path):
    proc = run_cli("train", str(REPO / "configs" / "segformer-b0-cpu.yaml"), f"data.root={synth_data}",
                   f"run.dir={tmp_path}", "run.name=sf", "data.image_size=64", "trainer.max_epochs=1",
                   "trainer.batch_size=4", "data.num_workers=0", "logging.predictions=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "sf"
    summary = json.loads((run / "summary.json").read_text())
    assert Path(summary["hf"]) == run / "hf"
    from transformers import SegformerForSemanticSegmentation

    from nailseg.stacks.lightning.stack import STACK
    from nailseg.runs import open_run

    plain = SegformerForSemanticSegmentation.from_pretrained(run / "hf").eval()
    assert plain.config.id2label == {0: "nail"}
    ours = STACK.load_model(*open_run(run))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(plain(pixel_values=x).logits, ours.hf(pixel_values=x).logits, atol=1e-5)
    out = run_cli("export", str(run), "--format", "hf", "--out", str(tmp_path / "exported"))
    assert out.returncode == 0 and (tmp_path / "exported" / "model.safetensors").exists()
    ev = run_cli("eval", str(run), "--split", "val", "--quiet")
    assert ev.returncode == 0, ev.stderr
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    onnx_out = run_cli("export", str(run), "--format", "onnx")
    assert onnx_out.returncode == 0, onnx_out.stderr[-2000:]
    report = json.loads((run / "export.json").read_text())
    assert report["graph_check"]["max_abs_diff"] <= 1e-3
    assert report["mask_agreement"] >= 0.998 or report["max_abs_diff"] <= 1e-2
    assert report["metadata"]["model"]["family"] == "segformer"
