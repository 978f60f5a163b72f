import pytest

from nailseg.core.io import append_jsonl, atomic_path, read_jsonl, write_json


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_jsonl_drops_a_cut_line(tmp_path):
    path = tmp_path / "m.jsonl"
    append_jsonl(path, {"epoch": 0})
    with open(path, "a") as fh:
        fh.write('{"epoch": 1, "val')
    assert read_jsonl(path) == [{"epoch": 0}]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    from nailseg.core.io import atomic_dir

    target = tmp_path / "export"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("one")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
