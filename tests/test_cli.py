"""The command line: bad input gives one line on stderr and a non-zero exit; the default model runs."""
import subprocess
import sys

import pytest


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "glass_edge.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, needle", [
    (["run", "/nonexistent/model.gguf"], "not found"),
    (["run", "--density", "0"], "density"),
    (["run", "--density", "1.5"], "density"),
    (["run", "--density", "abc"], "density"),
    (["run", "--method", "magic"], "unknown method"),
    (["run", "-n", "-3"], "positive"),
])
def test_bad_input_one_line_error(args, needle):
    r = cli(*args)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_corrupt_and_truncated_models(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 10)
    trunc = tmp_path / "trunc.gguf"
    from glass_edge.synth_tiny import write_tiny_model
    full = write_tiny_model(tmp_path / "full.gguf", ftype="f32")
    trunc.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    for path in (junk, trunc):
        r = cli("run", str(path), "-n", "4")
        assert r.returncode != 0
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "error" in lines[0], r.stderr


def test_default_model_run_prints_text_and_timings():
    r = cli("run", "--density", "0.4", "-n", "16", "-t", "2", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("The three most useful things") and len(r.stdout) > 40
    assert "eval time" in r.stderr and "tokens per second" in r.stderr
