"""``nailseg bench predict``: a run folder and its ONNX export timed side by side, each in its own process."""

import json

from tests.conftest import run_cli


def test_a_run_and_its_onnx_file_are_timed_on_the_same_photos(onnx_run, colour_data, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx graph")
    out = tmp_path / "bench"
    proc = run_cli("bench", "predict", str(onnx_run), str(onnx_run / "model.onnx"), str(broken),
                   "--data", str(colour_data), "--images", "3", "--size", "96x72", "--repeats", "2",
                   "--warmup", "1", "--out", str(out))
    # the broken file fails its own row (exit 2) and hides nothing: the other two are timed and written
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "broken.onnx" in proc.stdout and "failed:" in proc.stdout and "Traceback" not in proc.stdout
    rows = json.loads((out / "bench.json").read_text())
    assert [r["stack"] for r in rows] == ["lightning", "onnxruntime"]
    summary = json.loads((onnx_run / "summary.json").read_text())
    assert rows[0]["params"] == summary["parameters"] and rows[0]["input_hw"] == [64, 64]
    for row in rows:
        assert row["calls"] == 6 and row["photo_hw"] == [[72, 96]]
        assert 0 < row["latency_ms_min"] <= row["latency_ms"] <= row["latency_ms_p90"] <= row["latency_ms_max"]
        assert row["environment"]["cpu"]["profile"] and row["peak_rss_mb"] > 50
    assert (out / "bench.png").stat().st_size > 0


def test_a_target_that_is_no_model_is_refused_before_anything_runs(colour_data, tmp_path):
    proc = run_cli("bench", "predict", str(tmp_path / "no-run"), "--data", str(colour_data),
                   "--out", str(tmp_path / "bench"))
    assert proc.returncode == 2 and "no-run" in proc.stderr and "not a run folder" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "bench").exists()
