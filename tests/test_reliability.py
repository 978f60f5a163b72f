"""Hostile and careless input: each case exits 2 with one 'error:' line, no traceback, and leaves
nothing half-written. Every item of docs/reliability.md has its test here or next to its module."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, TINY_TRAIN, make_pair_folder, run_cli, scratch, write_image

CONFIG = str(REPO / "configs" / "demo-cpu.yaml")
MARKER = "/tmp/nailseg-pwned-{}"


class Pwn:
    """A pickle that, when loaded with weights_only=False, writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_error_line(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-1000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:") or ": error: " in x]  # ours, or argparse's
    assert errors, proc.stderr
    return errors


def _bomb_png(path: Path, w: int = 60000, h: int = 60000) -> Path:
    """A PNG whose header claims w x h pixels (a decompression bomb) in a few hundred bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compress(b"\x00" * 1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


# ---- the table: every remaining exit-1 traceback is now one error line and exit 2 -----------------

def _cases(tmp: Path, data: Path) -> list[tuple[str, list[str]]]:
    (tmp / "cfgdir").mkdir()
    (tmp / "text.pth").write_text("garbage")
    import torch

    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp / "other.pth")
    (tmp / "twice.txt").write_text("background\nnail\nbackground\n")
    (tmp / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    (tmp / "afile").write_text("x")
    bombs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
    (tmp / "bomb.yaml").write_text(bombs + "data: *i\n")
    (tmp / "dup.yaml").write_text(f"data:\n  root: {data}\ntrainer:\n  max_epochs: 1\ntrainer:\n  max_epochs: 2\n")
    (tmp / "wide.csv").write_text("file,g\nimg0.jpg," + "x" * 200_000 + "\n")
    (tmp / "deep.yaml").write_text("data: " + "[" * 500 + "]" * 500 + "\n")
    (tmp / "nul.yaml").write_text('run: {name: "a\\0b"}\n')
    alias_override = "data.root=" + "[&a [x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], " \
                     "&c [*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], [*d,*d,*d,*d,*d,*d,*d,*d,*d]]"
    return [
        ("config is a folder", ["train", str(tmp / "cfgdir")]),
        ("config not UTF-8", ["train", str(tmp / "binary.yaml")]),
        ("YAML alias bomb in a file", ["train", str(tmp / "bomb.yaml")]),
        ("YAML alias bomb in an override", ["train", CONFIG, alias_override]),
        ("trainer.devices=0", ["train", CONFIG, f"data.root={data}", "trainer.devices=0"]),
        ("strategy=bogus", ["train", CONFIG, f"data.root={data}", "trainer.strategy=bogus"]),
        ("image_size=100000", ["train", CONFIG, f"data.root={data}", "data.image_size=100000"]),
        ("empty data.root", ["train", CONFIG, "data.root="]),
        ("unknown encoder", ["train", CONFIG, f"data.root={data}", "model.encoder=resnet9000"]),
        ("accelerator gpu without one", ["train", CONFIG, f"data.root={data}", "trainer.accelerator=gpu"]),
        ("imagenet weights offline", ["train", CONFIG, f"data.root={data}", "model.encoder=resnet18",
                                      "model.encoder_weights=imagenet"]),
        ("balance --bins 0", ["data", "balance", str(data), "--bins", "0"]),
        ("balance --epoch-size 0", ["data", "balance", str(data), "--epoch-size", "0"]),
        ("coco --out is a folder", ["data", "coco", str(data), "--out", str(tmp / "cfgdir")]),
        ("balance --out is a folder", ["data", "balance", str(data), "--out", str(tmp / "cfgdir")]),
        ("synth out is a file", ["data", "synth", str(tmp / "afile"), "--n", "2"]),
        ("synth --n 0", ["data", "synth", str(tmp / "s0"), "--n", "0"]),
        ("compare --folds 1", ["compare", CONFIG, "--folds", "1", "--out", str(tmp / "c1")]),
        # refused before the run folder exists (each used to leave a folder that blocked resume)
        ("more folds than pairs", ["train", CONFIG, f"data.root={data}", "data.split.folds=5"]),
        ("fractions leave no training pair", ["train", CONFIG, f"data.root={data}", "data.split.val=0.5",
                                              "data.split.test=0.5"]),
        ("balance CSV missing", ["train", CONFIG, f"data.root={data}", "data.balance.by=csv",
                                 f"data.balance.csv={tmp / 'nope.csv'}", "data.balance.column=g"]),
        ("pretrain.synth_size=10x10", ["train", CONFIG, f"data.root={data}", "pretrain.synth_size=10x10"]),
        ("data.seed=-1", ["train", CONFIG, f"data.root={data}", "data.seed=-1"]),
        ("limit_train_batches=-1", ["train", CONFIG, f"data.root={data}", "trainer.limit_train_batches=-1"]),
        ("limit_train_batches=1.5", ["train", CONFIG, f"data.root={data}", "trainer.limit_train_batches=1.5"]),
        ("gradient_clip_val=nan", ["train", CONFIG, f"data.root={data}", "trainer.gradient_clip_val=.nan"]),
        ("gradient_clip_val<0", ["train", CONFIG, f"data.root={data}", "trainer.gradient_clip_val=-1"]),
        ("lr=inf", ["train", CONFIG, f"data.root={data}", "optim.lr=.inf"]),
        ("fsdp on a CPU", ["train", CONFIG, f"data.root={data}", "trainer.strategy=fsdp"]),
        ("deepspeed not installed", ["train", CONFIG, f"data.root={data}", "trainer.strategy=deepspeed"]),
        ("num_nodes=2 without a cluster", ["train", CONFIG, f"data.root={data}", "trainer.num_nodes=2"]),
        ("crop scale [0, 0]", ["train", CONFIG, f"data.root={data}",
                               "augment.train=[{name: random_resized_crop, scale: [0, 0]}]"]),
        ("affine scale [-1, 0]", ["train", CONFIG, f"data.root={data}",
                                  "augment.train=[{name: affine, scale: [-1, 0]}]"]),
        ("cache_dir is a file", ["train", CONFIG, f"data.root={data}", "data.cache=disk",
                                 f"data.cache_dir={tmp / 'afile'}"]),
        ("duplicated YAML keys", ["train", str(tmp / "dup.yaml")]),
        ("YAML nested 500 deep (file)", ["train", str(tmp / "deep.yaml")]),
        ("YAML nested 500 deep (override)", ["train", CONFIG, "data.root=" + "[" * 500 + "]" * 500]),
        ("run.name with NUL", ["train", str(tmp / "nul.yaml"), f"data.root={data}"]),
        ("run.name over 255 bytes", ["train", CONFIG, f"data.root={data}", "run.name=" + "n" * 300]),
        ("run.dir is a file", ["train", CONFIG, f"data.root={data}", f"run.dir={tmp / 'afile'}"]),
        ("run.dir under a file", ["train", CONFIG, f"data.root={data}", f"run.dir={tmp / 'afile' / 'runs'}"]),
        ("balance CSV not UTF-8", ["data", "balance", str(data), "--by", "csv", "--csv", str(tmp / "binary.yaml"),
                                   "--column", "g"]),
        ("balance CSV is a folder", ["data", "balance", str(data), "--by", "csv", "--csv", str(tmp / "cfgdir"),
                                     "--column", "g"]),
        ("balance CSV with a 200 KB field", ["data", "balance", str(data), "--by", "csv", "--csv",
                                             str(tmp / "wide.csv"), "--column", "g"]),
        ("balance --epoch-size 1e10", ["data", "balance", str(data), "--epoch-size", "10000000000"]),
        ("serve --max-pixels 200000000", ["serve", str(tmp / "afile"), "--max-pixels", "200000000"]),
        ("synth --size 32x32", ["data", "synth", str(tmp / "s32"), "--n", "2", "--size", "32x32"]),
        ("synth --size 40000x40000", ["data", "synth", str(tmp / "s40k"), "--n", "2", "--size", "40000x40000"]),
        # a local encoder_weights file is loaded before the run folder exists (it used to leave one behind)
        ("encoder_weights a text file", ["train", CONFIG, f"data.root={data}", "model.encoder=resnet18",
                                         f"model.encoder_weights={tmp / 'text.pth'}"]),
        ("encoder_weights of another model", ["train", CONFIG, f"data.root={data}", "model.encoder=resnet18",
                                              f"model.encoder_weights={tmp / 'other.pth'}"]),
        ("classes.txt names a class twice", ["data", "check", str(data), "--classes", str(tmp / "twice.txt")]),
        ("--classes names a class twice", ["data", "check", str(data), "--classes", "nail,skin,nail"]),
        ("compare with a config that does not load", ["compare", CONFIG, str(tmp / "binary.yaml"),
                                                      f"data.root={data}", "--out", str(tmp / "cmp")]),
    ]


def test_table_of_bad_input_exits_2_with_one_line(tmp_path, monkeypatch):
    data = make_pair_folder(tmp_path / "data", n=4)
    runs = tmp_path / "runs"
    for name, argv in _cases(tmp_path, data):
        started = time.monotonic()
        explicit = any(a.startswith("run.dir=") for a in argv)
        extra = [f"run.dir={runs}"] if argv[0] == "train" and argv[1] == CONFIG and not explicit else []
        proc = run_cli(*argv, *extra, env={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
        errors = _one_error_line(proc)
        assert len(errors) == 1, (name, errors)
        assert len(proc.stderr) < 2000, (name, len(proc.stderr))  # echoed values are previews
        assert time.monotonic() - started < 120, name
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # refused runs leave nothing
    assert not (tmp_path / "s32").exists() and not (tmp_path / "s40k").exists() and not (tmp_path / "cmp").exists()


def test_a_weights_file_is_told_from_a_pickle_that_could_run_code(tmp_path):
    """Garbage is 'not a weights file'; a pickle of an object whose loading calls a function (any
    pickle protocol) is refused as one that could run code, and runs nothing."""
    import pickle

    from nailseg.errors import ConfigError
    from nailseg.stacks._torch.checkpoints import safe_load

    (tmp_path / "text.pth").write_text("garbage")
    with pytest.raises(ConfigError, match=r"text\.pth: not a weights file: neither a torch archive nor a pickle"):
        safe_load(tmp_path / "text.pth", "weights file")
    marker = tmp_path / "ran"
    for protocol in (2, 5):
        (tmp_path / f"p{protocol}.pth").write_bytes(pickle.dumps(Pwn(str(marker)), protocol=protocol))
        with pytest.raises(ConfigError, match="refused to load this weights file: it holds Python objects"):
            safe_load(tmp_path / f"p{protocol}.pth", "weights file")
    assert not marker.exists()


def test_decompression_bomb_is_a_data_error_everywhere(tmp_path):
    data = make_pair_folder(tmp_path / "data", n=3)
    _bomb_png(data / "images" / "img0.png")
    (data / "images" / "img0.jpg").unlink()
    check = run_cli("data", "check", str(data))
    errors = _one_error_line(check)
    assert any("img0.png" in e and "megapixels" in e for e in errors)
    train = run_cli("train", CONFIG, f"data.root={data}", f"run.dir={tmp_path / 'runs'}", *TINY_TRAIN)
    assert any("img0.png" in e for e in _one_error_line(train))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_huge_mask_is_reported_from_its_header(tmp_path):
    data = make_pair_folder(tmp_path / "data", n=2)
    _bomb_png(data / "labels" / "img0.png", 20000, 5000)  # 100 MP: under the limit, but not its image's size
    started = time.monotonic()
    proc = run_cli("data", "check", str(data))
    errors = _one_error_line(proc)
    assert any("img0.png: mask is 20000x5000 but its image img0.jpg is 40x30" in e for e in errors)
    assert time.monotonic() - started < 30


def test_odd_names_and_mask_values_are_reported(tmp_path):
    data = make_pair_folder(tmp_path / "data", n=2)
    weird = "bad\nname"
    write_image(data / "images" / f"{weird}.jpg", np.zeros((30, 40, 3), np.uint8))
    proc = run_cli("data", "check", str(data))
    assert proc.returncode == 2
    line = next(x for x in proc.stderr.splitlines() if "bad" in x)
    assert "bad\\nname" in line  # one line, the newline escaped

    small = make_pair_folder(tmp_path / "small", n=2)
    for m in (small / "labels").iterdir():
        arr = np.asarray(Image.open(m))
        Image.fromarray((arr > 0).astype(np.uint8) * 3).save(m)  # labels 0/3: below the rule's threshold
    proc = run_cli("data", "check", str(small))
    assert proc.returncode == 0
    assert "mask values go up to 3" in proc.stderr and "every mask is empty" in proc.stderr
    assert "warnings:     3" in proc.stdout

    wide = make_pair_folder(tmp_path / "wide", n=1)
    m = wide / "labels" / "img0.png"
    Image.fromarray((np.asarray(Image.open(m)) > 0).astype(np.uint16) * 255).save(m)  # 16-bit 0/255
    assert Image.open(m).mode.startswith("I")
    proc = run_cli("data", "check", str(wide))
    assert "mask values go up to 255 but the mask rule needs > 32767" in proc.stderr


# ---- runs: locks, resume, code execution, corrupt checkpoints ----------------------------------

@pytest.fixture(scope="module")
def small_run(synth_data, tmp_path_factory):
    pytest.importorskip("lightning")
    with scratch(tmp_path_factory, "rel-runs") as runs:
        proc = run_cli("train", CONFIG, f"data.root={synth_data}", f"run.dir={runs}", "run.name=r", *TINY_TRAIN,
                       "trainer.max_epochs=1", "logging.tensorboard=false")
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield runs / "r"


def _copy_run(run: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run, dest)
    (dest / ".lock").unlink(missing_ok=True)
    return dest


def test_two_processes_never_share_a_run(synth_data, tmp_path):
    pytest.importorskip("lightning")
    args = ["train", CONFIG, f"data.root={synth_data}", f"run.dir={tmp_path}", "run.name=same", *TINY_TRAIN,
            "trainer.max_epochs=3", "logging.tensorboard=false"]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    first = subprocess.Popen([sys.executable, "-m", "nailseg.cli", *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "same" / "split.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        second = run_cli(*args)
        errors = _one_error_line(second)
        assert "already exists" in errors[0] or "in use" in errors[0]
        resumed = run_cli("train", "--resume", str(tmp_path / "same"))
        errors = _one_error_line(resumed)
        assert "in use by another nailseg process (pid" in errors[0] and str(first.pid) in errors[0]
    finally:
        out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    epochs = [json.loads(x)["epoch"] for x in (tmp_path / "same" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]


def test_resume_validates_before_writing(small_run, tmp_path):
    run = _copy_run(small_run, tmp_path / "r")
    before = (run / "config.yaml").read_text()
    proc = run_cli("train", "--resume", str(run), "model.encoder=resnet34")
    assert "would change the model" in _one_error_line(proc)[0]
    assert (run / "config.yaml").read_text() == before
    empty = _copy_run(small_run, tmp_path / "nockpt")
    for f in (empty / "checkpoints").iterdir():
        f.unlink()
    metrics = (empty / "metrics.jsonl").read_text()
    proc = run_cli("train", "--resume", str(empty))
    assert "no checkpoint to resume from" in _one_error_line(proc)[0]
    assert (empty / "metrics.jsonl").read_text() == metrics


def test_no_file_in_a_run_can_execute_code(small_run, synth_data, tmp_path):
    """Plant a malicious pickle in every loadable file; resume, eval, predict, export run nothing."""
    import torch

    marker = MARKER.format(os.getpid())
    Path(marker).unlink(missing_ok=True)
    run = _copy_run(small_run, tmp_path / "evil")
    real = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    real["evil"] = Pwn(marker)
    for name in ("last.ckpt", "best.ckpt"):
        torch.save(real, run / "checkpoints" / name)
    torch.save({"evil": Pwn(marker)}, run / "model.pt")
    imgs = tmp_path / "imgs"
    write_image(imgs / "a.jpg", np.zeros((30, 40, 3), np.uint8))
    for argv in (["train", "--resume", str(run)], ["eval", str(run), "--split", "val", "--quiet"],
                 ["predict", str(run), str(imgs), "--out", str(tmp_path / "p")],
                 ["export", str(run), "--format", "state_dict", "--out", str(tmp_path / "m.pt")],
                 ["train", CONFIG, f"data.root={synth_data}", f"run.dir={tmp_path / 'runs'}", *TINY_TRAIN,
                  f"model.init_from={run / 'model.pt'}"]):
        proc = run_cli(*argv)
        assert proc.returncode == 2, (argv, proc.stderr[-1500:])
        assert "Traceback" not in proc.stderr
        assert "refused to load" in proc.stderr or "error:" in proc.stderr
    assert not Path(marker).exists(), "a planted pickle ran"
    assert not (tmp_path / "runs").exists()  # init_from is verified before the run folder is made


def test_corrupt_checkpoints_give_one_line_and_fall_back(small_run, tmp_path):
    run = _copy_run(small_run, tmp_path / "torn")
    best = run / "checkpoints" / "best.ckpt"
    best.write_bytes(best.read_bytes()[:1000])
    proc = run_cli("eval", str(run), "--split", "val", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warning:" in proc.stderr and "best.ckpt" in proc.stderr and "using last.ckpt" in proc.stderr
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    errors = _one_error_line(run_cli("eval", str(run), "--split", "val", "--quiet"))
    assert all("corrupt or truncated checkpoint" in e for e in errors)
    errors = _one_error_line(run_cli("train", "--resume", str(run)))
    assert "last.ckpt: corrupt or truncated checkpoint" in errors[0]


def test_invalid_run_config_and_eval_mask_size(small_run, tmp_path):
    run = _copy_run(small_run, tmp_path / "badcfg")
    (run / "config.yaml").write_text("data: [unclosed\n")
    assert "not valid YAML" in _one_error_line(run_cli("eval", str(run)))[0]
    other = make_pair_folder(tmp_path / "other", n=2)
    write_image(other / "labels" / "img0.png", np.zeros((10, 10), np.uint8))
    errors = _one_error_line(run_cli("eval", str(small_run), "--data", str(other), "--out",
                                     str(tmp_path / "e.json"), "--quiet"))
    assert "img0.png: mask is 10x10" in errors[0]
    for argv in (["eval", str(small_run), "--out", str(tmp_path)],
                 ["predict", str(small_run), str(other / "images"), "--out", str(other / "images" / "img1.jpg")],
                 ["export", str(small_run), "--format", "state_dict", "--out", str(tmp_path)]):
        _one_error_line(run_cli(*argv))


# ---- outputs never destroy data ------------------------------------------------------------------

def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_outputs_never_go_into_a_data_set_or_over_an_input(small_run, tmp_path):
    data = make_pair_folder(tmp_path / "data", n=3)
    before = _snapshot(data)
    for argv in (["eval", str(small_run), "--data", str(data), "--overlays", str(data / "labels"), "--quiet"],
                 ["eval", str(small_run), "--data", str(data), "--overlays", str(data / "images" / "sub"), "--quiet"],
                 ["eval", str(small_run), "--data", str(data), "--out", str(data / "labels" / "e.json"), "--quiet"],
                 ["predict", str(small_run), str(data / "images"), "--out", str(data / "masks-here" / ".." / "labels")]):
        errors = _one_error_line(run_cli(*argv))
        assert "data set folder" in errors[0], (argv, errors)
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg", np.zeros((30, 40, 3), np.uint8))
    write_image(photos / "a_mask.png", np.full((30, 40), 255, np.uint8))  # somebody's mask, not ours
    kept = _snapshot(photos)
    errors = _one_error_line(run_cli("predict", str(small_run), str(photos), "--out", str(photos)))
    assert "would overwrite the input" in errors[0] and "a_mask.png" in errors[0]
    assert _snapshot(photos) == kept and _snapshot(data) == before


def test_compare_runs_reads_the_runs_and_writes_under_out(small_run, tmp_path):
    run = _copy_run(small_run, tmp_path / "a")
    before = _snapshot(run)
    proc = run_cli("compare", "--runs", str(run), "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _snapshot(run) == before
    assert (tmp_path / "cmp" / "compare.json").exists() and (tmp_path / "cmp" / "runs" / "a" / "overlays").is_dir()


# ---- the run lock and tampered run folders -------------------------------------------------------

def test_a_lock_that_is_a_symlink_or_a_folder_is_refused(small_run, tmp_path):
    run = _copy_run(small_run, tmp_path / "lock")
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    (run / ".lock").unlink(missing_ok=True)
    (run / ".lock").symlink_to(victim)
    errors = _one_error_line(run_cli("train", "--resume", str(run)))
    assert "lock file is a symbolic link" in errors[0]
    assert victim.read_text() == "keep me"
    (run / ".lock").unlink()
    (run / ".lock").mkdir()
    assert "lock file is a folder" in _one_error_line(run_cli("train", "--resume", str(run)))[0]


def _tamper_cases(run: Path, tmp: Path):
    import torch

    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    ck = run / "checkpoints"
    return [
        ("empty Lightning checkpoint", lambda: torch.save({"state_dict": {}, "epoch": 0}, ck / "last.ckpt"),
         ["train", "--resume", str(run), "trainer.max_epochs=9"], "not a Lightning checkpoint"),
        ("state_dict is a list", lambda: [torch.save({"state_dict": [1], "epoch": 0}, ck / n)
                                           for n in ("last.ckpt", "best.ckpt")],
         ["eval", str(run), "--split", "val", "--quiet"], "not a Lightning checkpoint"),
        ("metrics epoch is a list", lambda: (run / "metrics.jsonl").write_text('{"epoch": [1]}\n{"epoch": 0}\n'),
         ["train", "--resume", str(run), "trainer.max_epochs=9"], "metrics.jsonl: line 1"),
        ("metrics epoch is a string", lambda: (run / "metrics.jsonl").write_text('{"epoch": "7"}\n{"epoch": 0}\n'),
         ["train", "--resume", str(run), "trainer.max_epochs=9"], "metrics.jsonl: line 1"),
        ("metrics not UTF-8", lambda: (run / "metrics.jsonl").write_bytes(b'{"epoch": 0}\n\xff\xfe\n{"epoch": 1}\n'),
         ["train", "--resume", str(run), "trainer.max_epochs=9"], "not UTF-8"),
        ("split.json is a list", lambda: (run / "split.json").write_text("[1, 2]"),
         ["eval", str(run), "--split", "val", "--quiet"], "split.json"),
        ("split.json wrong types", lambda: (run / "split.json").write_text('{"train": 1, "val": [[1]], "test": []}'),
         ["train", "--resume", str(run), "trainer.max_epochs=9"], "split.json"),
        ("split.json not UTF-8", lambda: (run / "split.json").write_bytes(b"\xff\xfe{}"),
         ["eval", str(run), "--split", "val", "--quiet"], "split.json"),
        ("split.json is a folder", lambda: ((run / "split.json").unlink(), (run / "split.json").mkdir()),
         ["eval", str(run), "--split", "val", "--quiet"], "split.json"),
        ("split.json is a FIFO", lambda: ((run / "split.json").unlink(), os.mkfifo(run / "split.json")),
         ["eval", str(run), "--split", "val", "--quiet"], "split.json"),
        ("split names a missing file", lambda: (run / "split.json").write_text(
            json.dumps({**json.loads((run / "split.json").read_text()),
                        "val": json.loads((run / "split.json").read_text())["val"] + ["gone.jpg"]})),
         ["eval", str(run), "--split", "val", "--quiet"], "gone.jpg"),
        ("init_from is a FIFO", lambda: None,
         ["train", CONFIG, f"data.root={json.loads((run / 'split.json').read_text()).get('data_root', '')}",
          f"run.dir={tmp / 'new-runs'}", f"model.init_from={fifo}"], "not a weights file"),
        ("init_from=/dev/zero", lambda: None,
         ["train", CONFIG, f"data.root={json.loads((run / 'split.json').read_text()).get('data_root', '')}",
          f"run.dir={tmp / 'new-runs'}", "model.init_from=/dev/zero"], "not a weights file"),
    ]


def test_tampered_run_files_give_one_line_and_change_nothing(small_run, tmp_path):
    import shutil

    names = [c[0] for c in _tamper_cases(_copy_run(small_run, tmp_path / "probe"), tmp_path / "probe")]
    shutil.rmtree(tmp_path / "probe")
    for i, name in enumerate(names):
        work = tmp_path / f"case{i}"
        work.mkdir()
        run = _copy_run(small_run, work / "run")
        _, tamper, argv, expected = _tamper_cases(run, work)[i]
        tamper()
        config = (run / "config.yaml").read_text()
        proc = run_cli(*argv, timeout=120)
        errors = _one_error_line(proc)
        assert expected in errors[0], (name, errors)
        assert (run / "config.yaml").read_text() == config, name  # nothing rewritten
        assert not (work / "new-runs").exists(), name
        shutil.rmtree(work)  # each case is a whole run copy (~330 MB): one at a time on the disk


def test_an_inherited_run_dir_never_joins_a_run_it_does_not_own(small_run, synth_data, tmp_path):
    """NAILSEG_RUN_DIR is how Lightning's DDP workers (rank > 0) join rank 0's run. A rank-0
    process that inherits it is no worker: it is refused instead of replacing the run's lines."""
    run = _copy_run(small_run, tmp_path / "owned")
    metrics = (run / "metrics.jsonl").read_text()
    proc = run_cli("train", CONFIG, f"data.root={synth_data}", *TINY_TRAIN, env={"NAILSEG_RUN_DIR": str(run)})
    assert "already exists" in _one_error_line(proc)[0]
    assert (run / "metrics.jsonl").read_text() == metrics


@pytest.mark.parametrize("checkpoint_written, lines", [(True, [0, 1]), (False, [0])],
                         ids=["kill-after-the-checkpoint", "kill-before-the-checkpoint"])
def test_a_line_staged_before_a_kill_is_kept_only_if_its_checkpoint_was_written(tmp_path, checkpoint_written, lines):
    """The epoch's line is staged, the checkpoint written, then the line committed. A kill between
    the two: the resumed fit's first epoch says whether the checkpoint holds the staged epoch (it
    starts after it) or not (it runs it again), and the staged line is committed or dropped."""
    from nailseg.config import load_experiment
    from nailseg.contract import EpochRecord, TrainContext
    from nailseg.core.io import read_jsonl
    from nailseg.runs import PreparedData, RunDir

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    ctx = TrainContext(load_experiment(REPO / "configs" / "demo-cpu.yaml"), run, False, PreparedData({}, {}))
    for epoch in (0, 1):
        ctx.stage_epoch(EpochRecord(epoch=epoch, step=epoch + 1, train_loss=1.0 - epoch / 10, val_loss=None,
                                    val_iou=None, val_dice=None, lr=1e-3, images_per_s=None, epoch_time_s=1.0))
        assert [r["epoch"] for r in read_jsonl(run.metrics)] == list(range(epoch))  # never ahead of its checkpoint
        if epoch == 0:
            ctx.commit_epoch()
    # killed with epoch 1 staged; the resumed fit starts at 2 if its checkpoint was written, else at 1
    resumed = TrainContext(ctx.exp, run, True, PreparedData({}, {}))
    resumed.recover_epoch(2 if checkpoint_written else 1)
    assert [r["epoch"] for r in read_jsonl(run.metrics)] == lines
    assert not resumed.staged_line.exists()
