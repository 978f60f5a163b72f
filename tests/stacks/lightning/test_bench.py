import json

import pytest

from nailseg.cli import main
from tests.conftest import REPO

pytest.importorskip("torch")


def test_bench_loaders_writes_json_and_png(synth_data, tmp_path, capsys):
    pipelines = ["cpu", "kornia", "dali"]
    code = main(["bench", "loaders", "--data", str(synth_data), "--size", "64", "--batch", "4", "--workers", "1",
                 "--batches", "2", "--repeats", "2", "--pipelines", ",".join(pipelines), "--out", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    assert [r["pipeline"] for r in results] == pipelines
    for r in results:
        assert r["images_per_s"] > 0 and len(r["repeats"]) == 2
        assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        assert "warm-up" in r["method"]
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "dali" in capsys.readouterr().out


def test_bench_loaders_refuses_unknown_pipeline(synth_data, tmp_path, capsys):
    assert main(["bench", "loaders", "--data", str(synth_data), "--pipelines", "cpu,magic", "--out", str(tmp_path)]) == 2
    assert "unknown magic" in capsys.readouterr().err


def test_bench_train_reports_share_of_limit(synth_data, tmp_path):
    code = main(["bench", "train", str(REPO / "configs" / "demo-cpu.yaml"), f"data.root={synth_data}",
                 "data.image_size=64", "trainer.batch_size=4", "data.num_workers=0", "model.encoder=resnet18",
                 "--batches", "2", "--repeats", "1", "--precision", "32-true,bf16-mixed", "--out", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    assert [r["precision"] for r in results] == ["32-true", "32-true", "bf16-mixed", "bf16-mixed"]
    loader_rows = [r for r in results if "percent_of_limit" in r]
    assert len(loader_rows) == 2 and all(r["percent_of_limit"] > 0 for r in loader_rows)
