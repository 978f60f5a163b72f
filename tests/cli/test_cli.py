import subprocess
import sys

from nailseg.registry import load_stack
from nailseg.cli import main
from nailseg.errors import MissingDependencyError


def test_help_imports_no_framework():
    code = ("import sys\n"
            "from nailseg.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'tensorflow', 'lightning', 'albumentations') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "usage: nailseg" in proc.stdout


def test_data_check_imports_no_framework(tmp_path):
    from tests.conftest import make_pair_folder

    make_pair_folder(tmp_path)
    code = ("import sys\nfrom nailseg.cli import main\n"
            f"assert main(['data', 'check', {str(tmp_path)!r}]) == 0\n"
            "assert 'torch' not in sys.modules and 'tensorflow' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_missing_extra_is_one_line(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "segmentation_models_pytorch" else real(name, *a))
    try:
        load_stack("lightning")
    except MissingDependencyError as err:
        assert err.lines == [err.lines[0]]
        assert "pip install 'nailseg[torch]'" in err.lines[0]
    else:
        raise AssertionError("expected a MissingDependencyError")


def test_usage_errors_exit_2(capsys, tmp_path):
    assert main(["train"]) == 2
    assert "give a config file" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "s"), "--size", "12by4"]) == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_doctor_config_and_weights_import_no_framework():
    """The look-only verbs stay fast: they never import torch or TensorFlow."""
    code = ("import sys, io, contextlib\nfrom nailseg.cli import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    assert main(['doctor', '--json']) == 0\n"
            "    assert main(['config', 'keys']) == 0\n"
            "    assert main(['config', 'show', 'configs/nails-pretrained-cpu.yaml', 'trainer.max_epochs=3']) == 0\n"
            "    assert main(['weights', 'list']) == 0\n"
            "heavy = [m for m in ('torch', 'tensorflow', 'lightning') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "print(out.getvalue())\n")
    from tests.conftest import REPO

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert '"stacks"' in text and '"weights_offline"' in text          # doctor
    assert "trainer.max_epochs" in text and "default 30" in text          # config keys
    assert "max_epochs: 3" in text and "inception (mean = std = 0.5)" in text  # config show, resolved
    assert "tu-tf_efficientnet_lite0" in text                           # weights list


def test_config_show_refuses_a_bad_key_in_one_line(capsys):
    assert main(["config", "show", "trainer.max_epoch=3"]) == 2
    assert "unknown key 'trainer.max_epoch'" in capsys.readouterr().err
