"""The two sides the plug-in tests compare: greedy decoding through GlassLlama with the logits
each token was chosen from, and the same from stock llama.cpp in a subprocess (stock_reference.py)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

N_GREEDY = 64


def greedy(llm, prompt_tokens, n=N_GREEDY):
    """Greedy tokens and the logits each was chosen from (seen through a logits processor)."""
    seen = []

    def record(input_ids, scores):
        seen.append(np.array(scores, dtype=np.float32))
        return scores

    gen = llm.generate(prompt_tokens, temp=0.0, repeat_penalty=1.0, logits_processor=[record])
    tokens = [next(gen) for _ in range(n)]
    gen.close()
    return tokens, np.array(seen[:n])


def assert_sparse_kernels_follow(llm, prompt_tokens, ref_tokens, ref_logits):
    """Forces llm's sparse kernels on its (full) masks, teacher-forces stock's greedy text through
    them in one batch, and checks the logits against stock's: mean |error| within 3% of the
    logits' spread, max within 15%, argmax agreeing on at least 90% of the steps."""
    llm._glass_ctx.force_sparse_kernels = True
    llm.reset()
    llm.prefill(prompt_tokens)
    ops_before = llm.sparse_ops
    llm.eval(ref_tokens[:-1])  # one batch through the sparse path
    assert llm.sparse_ops > ops_before
    n = len(prompt_tokens)
    logits = np.array(llm.scores[n - 1: n - 1 + len(ref_tokens)])
    scale = ref_logits.std()
    err = np.abs(logits - ref_logits)
    assert err.mean() <= 0.03 * scale, (err.mean(), scale)
    assert err.max() <= 0.15 * scale, (err.max(), scale)
    assert (logits.argmax(-1) == ref_logits.argmax(-1)).mean() >= 0.90


def stock(path, prompt_tokens, tmp_path, n=N_GREEDY, teacher=None):
    """Stock llama.cpp's greedy tokens and logits (or, with teacher, logits along those tokens)."""
    out = tmp_path / "stock.npz"
    cmd = [sys.executable, str(Path(__file__).with_name("stock_reference.py")), str(path),
           json.dumps(prompt_tokens), str(n), str(out)]
    if teacher is not None:
        cmd += ["--teacher", json.dumps(teacher)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    data = np.load(out)
    return data["tokens"].tolist(), data["logits"]
