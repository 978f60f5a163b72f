import json
import os

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


def test_written_files_respect_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        from nailseg.core.io import atomic_dir

        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("1")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_stale_temp_files_of_dead_writers_are_cleaned(tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".summary.json.{dead.pid}.abc123.tmp"
    stale.write_text("half")
    other = tmp_path / ".notours.tmp"
    other.write_text("keep")
    write_json(tmp_path / "summary.json", {"ok": True})
    assert not stale.exists() and other.exists()


def test_a_dead_writers_checkpoint_temp_is_cleaned(tmp_path):
    """The checkpoint writer uses the same temp naming, so a 172 MB torn ``last.ckpt`` temp of a
    killed run goes at the next write to the folder."""
    from nailseg.core.io import write_text

    dead = tmp_path / ".last.ckpt.999999999.k3j2.tmp"
    dead.write_bytes(b"\0" * 1024)
    write_text(tmp_path / "x.txt", "hello")
    assert not dead.exists() and (tmp_path / "x.txt").read_text() == "hello"


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    import errno

    from nailseg.core.io import write_json
    from nailseg.errors import NailsegError

    target = tmp_path / "eval.json"
    write_json(target, {"iou": 0.5})
    real_replace = os.replace

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(NailsegError) as err:
        write_json(target, {"iou": 0.9})
    monkeypatch.setattr(os, "replace", real_replace)
    assert "no space left" in err.value.lines[0] and str(target) in err.value.lines[0]
    assert json.loads(target.read_text()) == {"iou": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]
