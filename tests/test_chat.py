"""`glass-edge chat` on gemma-3-270m: commands and a multi-turn exchange through stdin, and Ctrl-C /
Ctrl-D in a pseudo-terminal."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ)  # the glass_edge this interpreter imports (installed, or PYTHONPATH=python)
CHAT = [sys.executable, "-m", "glass_edge.cli", "chat", "-c", "512", "-t", "2", "-s", "1"]


def run_chat(lines, *flags):
    proc = subprocess.run(CHAT + list(flags), input="".join(line + "\n" for line in lines), capture_output=True,
                          text=True, env=ENV, timeout=600)
    return proc.returncode, proc.stdout, proc.stderr


def stats_blocks(err):
    """The /stats reports, in order: dicts of the numbers they show."""
    blocks = []
    for m in re.finditer(r"density (\S+) · method (\S+) .*?\ncontext: (\d+) of (\d+) tokens · (\d+) user turn",
                         err):
        block = dict(density=float(m.group(1)), method=m.group(2), context=int(m.group(3)), turns=int(m.group(5)))
        rest = err[m.end():].split("\ndensity ", 1)[0]
        prompt = re.search(r"last reply: prompt (\d+) tokens", rest)
        cover = re.search(r"statistics cover (\d+) prefilled tokens", rest)
        block["prompt"] = int(prompt.group(1)) if prompt else None
        block["cover"] = int(cover.group(1)) if cover else None
        blocks.append(block)
    return blocks


def test_commands_and_a_multi_turn_exchange_through_stdin():
    code, out, err = run_chat(["/help", "Hello there!", "/stats", "/density 0.3", "/method griffin",
                               "What is two plus two?", "/stats", "/density 7", "/method magic", "/frobnicate",
                               "/reset", "/stats"],
                              "-n", "6", "--temp", "0", "--system", "You are terse.")
    assert code == 0, err
    assert "chat format gemma-fallback" in err and "/density X" in err  # banner, /help
    replies = re.findall(r"\[(\d+) tokens at ([\d.]+) tokens/s · prompt (\d+) tokens", err)
    assert len(replies) == 2 and all(float(tps) > 0 for _, tps, _ in replies)
    one, two, cleared = stats_blocks(err)
    assert (one["density"], one["turns"]) == (0.5, 1) and (two["density"], two["turns"]) == (0.3, 2)
    # turn 2 reuses the KV cache: only its new tokens are prefilled, and the mask statistics grow by
    # exactly those tokens (the reply of turn 1 is in the cache but was never prefilled)
    assert two["prompt"] < one["context"] < two["context"]
    assert two["cover"] == one["cover"] + two["prompt"]
    assert one["cover"] == one["prompt"] - 1  # every prompt token but BOS
    assert "mask: 0.300 of FFN neurons" in err
    assert "usage: /density X" in err and "method not changed: unknown method 'magic'" in err
    assert "unknown command /frobnicate" in err
    assert (cleared["turns"], cleared["context"]) == (0, 0)
    assert "Traceback" not in err


def test_bad_flags_fail_with_one_line():
    proc = subprocess.run(CHAT + ["--density", "0"], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "density" in proc.stderr
    proc = subprocess.run(CHAT + ["/no/such/model.gguf"], capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "model.gguf" in proc.stderr


def test_ctrl_c_stops_a_reply_and_ctrl_d_leaves():
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(CHAT[0], CHAT[1:] + ["-n", "300", "--temp", "0"], env=ENV, encoding="utf-8",
                          timeout=300, dimensions=(40, 200))
    try:
        child.expect_exact("> ")
        child.sendline("Write a very long story about the sea.")
        child.expect_exact("about the sea.\r\n")  # the terminal's echo of the line
        child.expect(r"\S", timeout=300)   # the reply has started
        child.sendintr()                   # Ctrl-C
        child.expect(r"\[stopped · (\d+) tokens at")
        assert int(child.match.group(1)) < 299
        child.expect_exact("> ")           # still in the chat
        child.sendline("/stats")
        child.expect(r"context: (\d+) of 512 tokens · 1 user turn")
        child.expect_exact("> ")
        child.sendintr()                   # Ctrl-C at the prompt only clears the line
        child.expect_exact("(Ctrl-D or /quit leaves)")
        child.expect_exact("> ")
        child.sendeof()                    # Ctrl-D
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
