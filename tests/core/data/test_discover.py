import pytest

from nailseg.core.data.discover import find_pairs
from nailseg.errors import DataError
from tests.conftest import make_pair_folder


@pytest.mark.parametrize("mask_dir,suffix", [("labels", ".png"), ("masks", ".png"), ("labels", ".jpg")])
def test_layouts(tmp_path, mask_dir, suffix):
    make_pair_folder(tmp_path, mask_dir=mask_dir, mask_suffix=suffix)
    pairs, problems = find_pairs(tmp_path)
    assert [p.key for p in pairs] == ["img0.jpg", "img1.jpg", "img2.jpg"]
    assert problems == []
    assert all(p.mask.parent.name == mask_dir for p in pairs)


def test_kaggle_nested_folder(tmp_path):
    make_pair_folder(tmp_path / "nails_segmentation")
    pairs, _ = find_pairs(tmp_path)
    assert len(pairs) == 3


def test_subfolders_keep_their_group(tmp_path):
    make_pair_folder(tmp_path)
    (tmp_path / "images" / "img0.jpg").rename(tmp_path / "images" / "a.jpg")
    (tmp_path / "images" / "left").mkdir()
    (tmp_path / "images" / "img1.jpg").rename(tmp_path / "images" / "left" / "img1.jpg")
    (tmp_path / "labels" / "left").mkdir()
    (tmp_path / "labels" / "img1.png").rename(tmp_path / "labels" / "left" / "img1.png")
    (tmp_path / "labels" / "img0.png").rename(tmp_path / "labels" / "a.png")
    pairs, _ = find_pairs(tmp_path)
    assert {p.key: p.group_folder for p in pairs} == {"a.jpg": ".", "img2.jpg": ".", "left/img1.jpg": "left"}


def test_unpaired_files_each_named(tmp_path):
    make_pair_folder(tmp_path)
    (tmp_path / "labels" / "img0.png").unlink()
    (tmp_path / "images" / "img2.jpg").unlink()
    with pytest.raises(DataError) as info:
        find_pairs(tmp_path)
    lines = info.value.lines
    assert len(lines) == 2
    assert any("img0.jpg: image has no mask" in line for line in lines)
    assert any("img2.png: mask has no image" in line for line in lines)


def test_empty_folder_and_missing_images_dir(tmp_path):
    with pytest.raises(DataError, match="empty folder"):
        find_pairs(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="no images/ folder"):
        find_pairs(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        find_pairs(tmp_path / "nope")


def test_images_without_labels_folder(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no labels/ or masks/"):
        find_pairs(tmp_path)
