"""The plug-in on FFN shapes beyond llama/gemma3 (tests/test_plugin.py), on tiny synthetic models:

- starcoder2: non-gated FFN, up (+ bias) -> GELU -> down (+ bias); the GELU and the bias adds are
  ordinary CPU nodes between our two matmuls;
- phi3: gate and up fused in one ffn_up of 2*n_ff rows ([gate; up]); the masked up gathers rows
  j and n_ff + j for every kept neuron j, and the GLU splits the product;
- deepseek: a mixed model, layer 0 a dense SwiGLU FFN, layer 1 MoE experts + a shared expert,
  which stay on the CPU with a warning naming them.

References: stock llama.cpp in a subprocess (tests/stock_reference.py, use_extra_bufts=false),
models whose dropped neurons are zeroed, and the FFN inputs stock llama.cpp computes
(tests/stock_ffn_inputs.py) for the statistics.
"""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import gguf
import numpy as np
import pytest

from glass_edge import GlassLlama
from reference_runs import assert_sparse_kernels_follow, greedy, stock
from glass_edge.coverage import coverage_message, cpu_ffn_tensors
from glass_edge.synth_tiny import write_tiny_model

ARCHS = ["starcoder2", "phi3"]
FTYPES = ["f32", "q8_0", "q4_0", "q4_k"]
GGML_NAMES = {"f32": "f32", "q8_0": "q8_0", "q4_0": "q4_0", "q4_k": "q4_K"}
PROMPT = "the quick brown fox jumps over the lazy dog and the cat"
N_FF = 512
HERE = Path(__file__).parent

# deepseek's expected warning, where a test does not check it (those that do record every warning)
pytestmark = pytest.mark.filterwarnings("ignore:glass-edge. deepseek model")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("arch-models")


def tiny(model_dir: Path, arch: str, ftype: str = "f32", tag: str = "", **kw) -> Path:
    """A tiny model; `tag` names a variant (e.g. a transform) so its file does not collide."""
    path = model_dir / f"{arch}-{ftype}{'-' + tag if tag else ''}.gguf"
    if not path.exists():
        write_tiny_model(path, arch=arch, ftype=ftype, **kw)
    return path


def glass(path, **kw) -> GlassLlama:
    kw.setdefault("density", 1.0)
    kw.setdefault("method", "griffin")
    kw.setdefault("logits_all", True)
    kw.setdefault("repack", False)  # stock runs unrepacked too
    return GlassLlama(str(path), n_ctx=512, n_batch=512, n_threads=2, n_threads_batch=2, verbose=False, **kw)


def stock_ffn_inputs(path, prompt_tokens, tmp_path) -> dict:
    out = tmp_path / "h.npz"
    subprocess.run([sys.executable, str(HERE / "stock_ffn_inputs.py"), str(path), json.dumps(prompt_tokens), str(out)],
                   check=True, capture_output=True, timeout=300)
    return dict(np.load(out))


def f32_weights(path) -> dict:
    return {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(path)).tensors}


def glass_warnings(record) -> list:
    return [str(w.message) for w in record if str(w.message).startswith("glass-edge")]


# ---------------------------------------------------------------------------------------------
# the FFN table and dense equality with stock llama.cpp
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ftype", FTYPES)
def test_ffn_weights_live_on_glass_device(model_dir, arch, ftype):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        llm = glass(tiny(model_dir, arch, ftype))
    assert glass_warnings(record) == []  # every FFN is ours: nothing to warn about
    layers = llm._glass_model.layers
    assert len(layers) == 2
    for layer in layers:
        assert (layer["n_embd"], layer["n_ff"]) == (256, N_FF)
        assert layer["gate_in_up"] == (arch == "phi3")
        assert layer["gate_type"] == ""  # non-gated, or the gate lives in ffn_up
        assert layer["up_type"] == layer["down_type"] == GGML_NAMES[ftype]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ftype", FTYPES)
def test_every_neuron_selected_matches_stock(model_dir, tmp_path, arch, ftype):
    """density 1.0: greedy text identical over 64 tokens, logits equal to stock within 1e-4."""
    path = tiny(model_dir, arch, ftype)
    llm = glass(path, density=1.0, logits_all=False)
    prompt = llm.tokenize(PROMPT.encode())
    tokens, logits = greedy(llm, prompt)
    ref_tokens, ref_logits = stock(path, prompt, tmp_path)
    assert all(m is not None and len(m) == N_FF for m in llm.last_masks)  # a full mask was installed
    assert tokens == ref_tokens
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ftype", FTYPES)
def test_sparse_kernels_with_every_neuron_match_stock(model_dir, tmp_path, arch, ftype):
    """The sparse kernels forced for a full mask, teacher-forced along stock's greedy text in one
    batch; same tolerances as test_plugin.py: mean |error| <= 3% and max <= 15% of the logits'
    spread, argmax agreement >= 90%."""
    path = tiny(model_dir, arch, ftype)
    llm = glass(path, density=1.0)
    prompt = llm.tokenize(PROMPT.encode())
    ref_tokens, ref_logits = stock(path, prompt, tmp_path)
    assert_sparse_kernels_follow(llm, prompt, ref_tokens, ref_logits)


# ---------------------------------------------------------------------------------------------
# masks: only the kept neurons contribute
# ---------------------------------------------------------------------------------------------

KEEP = {il: np.sort(np.random.default_rng(7 + il).choice(N_FF, 200, replace=False)).astype(np.int32)
        for il in range(2)}


def _dropped(il):
    return np.setdiff1d(np.arange(N_FF), KEEP[il])


def zero_down_columns(name, arr):
    """ffn_down [n_embd, n_ff] (numpy order): a dropped neuron's column is zero."""
    parts = name.split(".")
    if len(parts) == 4 and parts[2] == "ffn_down" and parts[3] == "weight":
        arr = arr.copy()
        arr[:, _dropped(int(parts[1]))] = 0.0
    return arr


def zero_up_rows(name, arr):
    """A dropped neuron's up row is zero, and its up bias (so GELU(0) = 0); for phi3's fused
    ffn_up both its gate row j and its up row n_ff + j."""
    parts = name.split(".")
    if len(parts) == 4 and parts[2] == "ffn_up":
        arr = arr.copy()
        drop = _dropped(int(parts[1]))
        rows = np.concatenate([drop, drop + N_FF]) if arr.shape[0] == 2 * N_FF else drop
        arr[rows] = 0.0
    return arr


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("zeroed", ["down_columns", "up_rows"])
def test_masked_ffn_equals_model_with_dropped_neurons_zeroed(model_dir, tmp_path, arch, zeroed):
    """Masks applied to every token (prompt batch and single-token steps) give the logits of the
    same model with the dropped neurons zeroed, run by stock llama.cpp. With starcoder2's up bias a
    dropped neuron's GELU(bias) is not zero: the down_columns reference shows it still contributes
    nothing. Tolerance as in test_plugin.py: max |error| <= 3% of the logits' spread."""
    transform = zero_down_columns if zeroed == "down_columns" else zero_up_rows
    path = tiny(model_dir, arch)
    ref_path = tiny(model_dir, arch, tag=zeroed, transform=transform)
    llm = glass(path, method="dense")
    prompt = llm.tokenize(PROMPT.encode())
    teacher = [int(t) for t in np.random.default_rng(3).integers(4, 300, size=24)]
    _, ref_logits = stock(ref_path, prompt, tmp_path, teacher=teacher)
    llm.reset()
    llm.install_masks([KEEP[0], KEEP[1]])
    llm.eval(prompt)            # batched, masked
    for tok in teacher:         # single-token steps, masked
        llm.eval([tok])
    assert llm.sparse_ops > 0
    logits = np.array(llm.scores[len(prompt) - 1: len(prompt) + len(teacher)])
    scale = ref_logits.std()
    assert np.abs(logits - ref_logits).max() <= 0.03 * scale
    # and the mask matters: the unmasked model is far from the zeroed one
    full = glass(path, method="dense")
    full.eval(prompt)
    assert np.abs(np.array(full.scores[len(prompt) - 1]) - ref_logits[0]).max() > 0.1 * scale


# ---------------------------------------------------------------------------------------------
# prefill statistics against numpy, from the FFN inputs stock llama.cpp computes
# ---------------------------------------------------------------------------------------------

def reference_stats(h: np.ndarray, col_norm: np.ndarray, skip_bos: bool):
    """Activation and impact statistics of kernels/stats.h, in float64."""
    h = h[1:] if skip_bos else h
    h = h.astype(np.float64)
    v = h * col_norm[None, :]

    def unit(x):
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, n, out=np.zeros_like(x), where=n > 0)

    return (unit(h) ** 2).sum(0), (unit(v) ** 2).sum(0), h.shape[0]


@pytest.mark.parametrize("arch", ["llama", "gemma3", "starcoder2", "phi3", "deepseek"])
def test_prefill_statistics_match_numpy_from_stock_activations(model_dir, tmp_path, arch):
    """The C statistics equal numpy's, computed from the h = input of each ffn_down that stock
    llama.cpp computes for the same prompt: every row but BOS, the last layer its one output row
    (for deepseek only layer 0 has a dense FFN). Relative tolerance 1e-4 (float32 sums)."""
    path = tiny(model_dir, arch)
    llm = glass(path, density=0.5, logits_all=False)
    prompt = llm.tokenize(PROMPT.encode())
    llm.reset()
    llm.prefill(prompt)
    h = stock_ffn_inputs(path, prompt, tmp_path)
    weights = f32_weights(path)
    n_dense = 1 if arch == "deepseek" else 2
    assert len(llm._stats_act) == n_dense and sorted(h) == [f"h{il}" for il in range(n_dense)]
    for il in range(n_dense):
        col_norm = np.linalg.norm(weights[f"blk.{il}.ffn_down.weight"].astype(np.float64), axis=0)
        last = il == 1  # the model's last layer sees the output row only
        assert h[f"h{il}"].shape == ((1 if last else len(prompt)), N_FF)
        act, imp, rows = reference_stats(h[f"h{il}"], col_norm, skip_bos=not last)
        assert llm._stats_rows[il] == rows == (1 if last else len(prompt) - 1)
        np.testing.assert_allclose(llm._stats_act[il], act, rtol=1e-4, atol=1e-7 * rows)
        np.testing.assert_allclose(llm._stats_imp[il], imp, rtol=1e-4, atol=1e-7 * rows)
        assert act.max() > 10 * np.median(act)  # neurons differ: a permuted or constant result fails


# ---------------------------------------------------------------------------------------------
# mixed models: MoE layers stay on the CPU, with a warning that names them
# ---------------------------------------------------------------------------------------------

MOE_KINDS = ("router (ffn_gate_inp), MoE experts (ffn_down_exps, ffn_gate_exps, ffn_up_exps), "
             "shared expert (ffn_down_shexp, ffn_gate_shexp, ffn_up_shexp)")


def test_mixed_moe_model_warns_and_matches_stock(model_dir, tmp_path):
    """deepseek with a dense layer 0 and an MoE layer 1: the warning names the architecture, the
    layer and its tensors; at density 1.0 greedy text and logits equal stock llama.cpp's."""
    path = tiny(model_dir, "deepseek")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        llm = glass(path, density=1.0, logits_all=False)
    assert glass_warnings(record) == [
        "glass-edge: deepseek model: only the dense FFN of layer 0 (of 2) is sparsified; this FFN work "
        f"stays dense on the CPU (layer 1: {MOE_KINDS})"]
    assert llm.ffn_widths == [N_FF]
    prompt = llm.tokenize(PROMPT.encode())
    tokens, logits = greedy(llm, prompt)
    ref_tokens, ref_logits = stock(path, prompt, tmp_path)
    assert llm.mask_densities() == [1.0]
    assert tokens == ref_tokens
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)


def test_mixed_moe_model_masks_its_dense_layer(model_dir, tmp_path):
    """Sparse in the dense layer, experts untouched: the logits of stock llama.cpp on the model
    whose layer-0 dropped neurons are zeroed."""
    path = tiny(model_dir, "deepseek")
    ref_path = tiny(model_dir, "deepseek", tag="zeroed", transform=zero_down_columns)
    llm = glass(path, method="dense")
    prompt = llm.tokenize(PROMPT.encode())
    teacher = [int(t) for t in np.random.default_rng(5).integers(4, 300, size=16)]
    _, ref_logits = stock(ref_path, prompt, tmp_path, teacher=teacher)
    llm.reset()
    llm.install_masks([KEEP[0]])
    llm.eval(prompt)
    for tok in teacher:
        llm.eval([tok])
    assert llm.sparse_ops > 0
    logits = np.array(llm.scores[len(prompt) - 1: len(prompt) + len(teacher)])
    assert np.abs(logits - ref_logits).max() <= 0.03 * ref_logits.std()


def test_all_moe_model_warns_it_runs_dense(model_dir):
    path = tiny(model_dir, "deepseek", tag="all-moe", n_dense_lead=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        llm = glass(path, density=0.5)
    assert glass_warnings(record) == [
        "glass-edge: no dense FFN in this deepseek model that glass-edge can sparsify; it runs dense "
        f"(layers 0-1: {MOE_KINDS})"]
    assert llm.ffn_widths == []


def test_coverage_message_names_layers_and_tensors():
    names = [f"blk.{il}.{k}.weight" for il in range(6)
             for k in (("ffn_norm", "ffn_up", "ffn_gate", "ffn_down") if il % 3 == 0 else
                       ("ffn_norm", "ffn_gate_inp", "ffn_up_exps", "ffn_down_exps", "ffn_up_shexp"))]
    names += ["blk.0.ffn_up.bias", "blk.1.ffn_down_exps.scale", "token_embd.weight"]
    n_ff = [64, 0, 0, 64]  # the plug-in took layers 0 and 3; layers 4-5 are past its table
    assert cpu_ffn_tensors(names, n_ff) == {
        il: ["ffn_down_exps", "ffn_gate_inp", "ffn_up_exps", "ffn_up_shexp"] for il in (1, 2, 4, 5)}
    assert coverage_message("qwen-ish", 6, n_ff, names) == (
        "glass-edge: qwen-ish model: only the dense FFN of layers 0, 3 (of 6) is sparsified; this FFN "
        "work stays dense on the CPU (layers 1-2, 4-5: router (ffn_gate_inp), "
        "MoE experts (ffn_down_exps, ffn_up_exps), shared expert (ffn_up_shexp))")
    # a dense FFN the plug-in declined is named as such
    assert "layer 1: dense FFN (ffn_down, ffn_up)" in coverage_message(
        "llama", 2, [64], [f"blk.{il}.ffn_{k}.weight" for il in range(2) for k in ("up", "down")])
    # everything taken: no message
    assert coverage_message("llama", 2, [64, 64], [f"blk.{il}.ffn_{k}.weight" for il in range(2)
                                                   for k in ("up", "gate", "down")]) is None
