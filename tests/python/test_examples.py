"""Each example in examples/ runs at its tiny size on the CPU and writes what it says it writes."""

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def run(script, out):
    done = subprocess.run([sys.executable, str(EXAMPLES / script), "--tiny", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("script,png", [("checkerboard.py", "checkerboard.png"),
                                        ("guidance_8gaussians.py", "guidance_8gaussians.png")])
def test_plotting_examples(script, png, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed: the plotting examples need it")
    stdout = run(script, tmp_path)
    assert (tmp_path / png).read_bytes()[:8] == PNG
    assert f"wrote {tmp_path / png}" in stdout


def test_own_array_example(tmp_path):
    stdout = run("own_array.py", tmp_path)
    assert (tmp_path / "own_array.safetensors").stat().st_size > 0
    assert stdout.count("sliced W2") == 2


def test_gaussian_linear_sbi_example(tmp_path):
    stdout = run("gaussian_linear_sbi.py", tmp_path)
    assert (tmp_path / "gaussian_linear_sbi.safetensors").stat().st_size > 0
    assert "posterior mean error" in stdout and "log p: mean absolute error" in stdout
