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
    failed = [line for line in proc.stdout.splitlines() if "failed:" in line]
    assert len(failed) == 2 and all("broken.onnx" in line for line in failed), proc.stdout  # progress + table
    assert "Traceback" not in proc.stderr
    rows = json.loads((out / "bench.json").read_text())
    assert [r.get("stack") for r in rows] == ["lightning", "onnxruntime", None] and "broken.onnx" in rows[2]["error"]
    rows = rows[:2]
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


def test_an_unreadable_photo_is_named_before_any_model_loads(onnx_run, colour_data, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "good.png").write_bytes((colour_data / "images" / "00.png").read_bytes())
    (photos / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    proc = run_cli("bench", "predict", str(onnx_run / "model.onnx"), "--data", str(photos),
                   "--out", str(tmp_path / "bench"))
    assert proc.returncode == 2 and "cut.jpg" in proc.stderr and "Traceback" not in proc.stderr
    assert "[1/1]" not in proc.stdout and not (tmp_path / "bench").exists()
