import json

import pytest

from nailseg.cli import main
from tests.conftest import REPO

pytest.importorskip("torch")


def test_bench_loaders_writes_json_and_png(synth_data, tmp_path, capsys):
    pipelines = ["decode-only", "cpu", "kornia", "dali"]
    code = main(["bench", "loaders", "--data", str(synth_data), "--size", "64", "--batch", "4", "--workers", "1",
                 "--batches", "2", "--repeats", "2", "--pipelines", ",".join(pipelines), "--cache", "none,ram,disk",
                 "--files", "40", "--out", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    assert [(r["pipeline"], r["cache"]) for r in results] == [
        ("decode-only", "none"), ("cpu", "none"), ("cpu", "ram"), ("cpu", "disk"),
        ("kornia", "none"), ("kornia", "ram"), ("kornia", "disk"), ("dali", "none")]
    assert all(r["files"] == 40 for r in results)
    for r in results:
        assert r["images_per_s"] > 0 and len(r["repeats"]) == 2
        assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        assert "warm-up" in r["method"] or r["pipeline"] == "decode-only"
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "dali" in capsys.readouterr().out


def test_bench_loaders_refuses_unknown_pipeline(synth_data, tmp_path, capsys):
    assert main(["bench", "loaders", "--data", str(synth_data), "--pipelines", "cpu,magic", "--out", str(tmp_path)]) == 2
    assert "unknown magic" in capsys.readouterr().err


def test_bench_train_reports_share_of_limit(synth_data, tmp_path):
    # 32 px: bf16 without native support (AVX2-only CPUs) runs about 9x slower than fp32, and the
    # rows, not the rates, are what this test checks
    code = main(["bench", "train", str(REPO / "configs" / "demo-cpu.yaml"), f"data.root={synth_data}",
                 "data.image_size=32", "trainer.batch_size=4", "data.num_workers=0", "model.encoder=resnet18",
                 "--batches", "2", "--repeats", "1", "--warmup", "1", "--precision", "32-true,bf16-mixed",
                 "--cache", "none,ram", "--out", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    assert all("after 1 warm-up step" in r["method"] for r in results), [r["method"] for r in results]
    assert [r["precision"] for r in results] == ["32-true"] * 3 + ["bf16-mixed"] * 3
    loader_rows = [r for r in results if "percent_of_limit" in r]
    assert [r["cache"] for r in loader_rows] == ["none", "ram"] * 2
    # each row's ratio is its rate over the same precision's limit row (the step fed from device memory)
    limits = {r["precision"]: r for r in results if "percent_of_limit" not in r}
    for r in loader_rows:
        limit = limits[r["precision"]]["images_per_s"]
        assert limit > 0 and r["ratio"] == pytest.approx(r["images_per_s"] / limit, rel=1e-12)


def test_bench_loaders_skips_a_pipeline_that_cannot_run_here(synth_data, tmp_path, capsys, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kornia" else real_find_spec(name, *a))
    code = main(["bench", "loaders", "--data", str(synth_data), "--size", "64", "--batch", "4", "--workers", "1",
                 "--batches", "1", "--repeats", "1", "--pipelines", "cpu,kornia", "--out", str(tmp_path)])
    assert code == 0
    assert "skipped kornia: kornia is not installed (pip install 'nailseg[gpuaug]'" in capsys.readouterr().err
    assert [r["pipeline"] for r in json.loads((tmp_path / "bench.json").read_text())] == ["cpu"]
    assert main(["bench", "loaders", "--data", str(synth_data), "--pipelines", "kornia", "--out", str(tmp_path / "x")]) == 2
