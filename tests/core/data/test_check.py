import json

import numpy as np
import pytest

from nailseg.cli import main
from nailseg.core.data.check import check_dataset
from tests.conftest import make_pair_folder, write_image


def test_report_on_good_folder(tmp_path):
    make_pair_folder(tmp_path, n=3, size=(40, 30))
    report = check_dataset(tmp_path)
    assert report.ok
    s = report.summary()
    assert s["pairs"] == 3
    assert s["width"] == {"min": 40.0, "median": 40.0, "max": 40.0}
    assert s["fg_share"]["min"] == pytest.approx(150 / 1200)


def test_every_problem_one_line(tmp_path, capsys):
    make_pair_folder(tmp_path, n=6)
    # size mismatch
    write_image(tmp_path / "labels" / "img0.png", np.zeros((10, 10), np.uint8))
    # truncated image
    data = (tmp_path / "images" / "img1.jpg").read_bytes()
    (tmp_path / "images" / "img1.jpg").write_bytes(data[: len(data) // 3])
    # zero-byte mask
    (tmp_path / "labels" / "img2.png").write_bytes(b"")
    # not an image
    (tmp_path / "images" / "img3.jpg").write_text("not a jpeg")
    # image without mask, mask without image
    (tmp_path / "labels" / "img4.png").unlink()
    write_image(tmp_path / "labels" / "orphan.png", np.zeros((30, 40), np.uint8))

    code = main(["data", "check", str(tmp_path)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line]
    assert code == 2
    assert "Traceback" not in err
    assert len(lines) == 6, err
    expected = ["img0.png: mask is 10x10 but its image img0.jpg is 40x30", "img1.jpg: corrupt or truncated",
                "img2.png: empty file", "img3.jpg: not an image", "img4.jpg: image has no mask",
                "orphan.png: mask has no image"]
    for fragment in expected:
        assert sum(fragment in line for line in lines) == 1, fragment
    assert all(line.startswith("error: ") for line in lines)


def test_check_json(tmp_path, capsys):
    make_pair_folder(tmp_path)
    assert main(["data", "check", str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"] == 3 and out["problems"] == []


@pytest.mark.parametrize("setup,fragment", [
    (lambda p: None, "empty folder"),
    (lambda p: (p / "other").mkdir(), "no images/ folder"),
])
def test_check_bad_folders_exit_2(tmp_path, capsys, setup, fragment):
    setup(tmp_path)
    assert main(["data", "check", str(tmp_path)]) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.realdata
def test_check_real_nails(real_data, capsys):
    assert main(["data", "check", str(real_data), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pairs"] == 40
    assert out["fg_share"]["median"] > 0.01
