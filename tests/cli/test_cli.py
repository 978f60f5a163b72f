import subprocess
import sys

from nailseg.stacks import load_stack
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
