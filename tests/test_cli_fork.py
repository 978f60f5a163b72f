"""The forked CLI runner (tests/cli_fork.py) stands in for a fresh interpreter: same exit codes,
same output, files written relative to the caller's working folder."""

from tests.conftest import make_pair_folder, run_cli


def _messages(stderr: str) -> list[str]:
    """Error and usage lines (progress bars differ in their speeds)."""
    return [line for line in stderr.splitlines() if line.startswith(("error:", "usage:", "nailseg"))]


def test_forked_and_fresh_commands_agree(tmp_path):
    for side in ("forked", "fresh"):  # two identical working folders
        data = make_pair_folder(tmp_path / side / "data", n=3)
        (data / "images" / "img1.jpg").write_bytes(b"not a jpeg")
    for args in (["data", "check", "data"],          # exit 2 with our error line, relative to cwd
                 ["data", "synth", "synth", "--n", "2", "--size", "64x48"],  # exit 0, files written in cwd
                 ["train", "--no-such-flag"],          # argparse's own exit 2 (SystemExit)
                 ["--help"]):                          # SystemExit(0) with the usage on stdout
        forked = run_cli(*args, cwd=tmp_path / "forked")
        fresh = run_cli(*args, cwd=tmp_path / "fresh", fresh=True)
        assert forked.returncode == fresh.returncode, (args, forked.stderr, fresh.stderr)
        assert forked.stdout.replace("\r", "") == fresh.stdout.replace("\r", ""), args
        assert _messages(forked.stderr) == _messages(fresh.stderr), args
        assert forked.returncode in (0, 2), (args, forked.stderr)
    assert sorted(p.name for p in (tmp_path / "forked" / "synth" / "images").iterdir()) == \
        sorted(p.name for p in (tmp_path / "fresh" / "synth" / "images").iterdir())

