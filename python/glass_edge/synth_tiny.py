"""Tiny random-weight GGUF models for tests.

`write_tiny_model()` writes a small model that stock llama.cpp loads and runs:
llama and gemma3 (gated FFNs), starcoder2 (non-gated up + GELU + down, with biases),
phi3 (gate and up fused in one ffn_up) and deepseek (dense FFN in the leading
layers, MoE experts plus a shared expert in the others). Weights are random with a fixed seed. The tokenizer is a small
SPM ("llama") vocab. The model is written as F32 with gguf-py and then, if
another type was asked for, quantized by llama.cpp's own quantizer (through
llama_cpp). That way the blocks are exactly what llama.cpp itself produces.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

import gguf
import numpy as np

from . import gguf_vocab, llama_quantize

__all__ = ["FTYPES", "ARCHS", "write_tiny_model"]

ARCHS = ("llama", "gemma3", "starcoder2", "phi3", "deepseek")

# deepseek MoE layers: experts, experts used per token, each expert's n_ff
_N_EXPERT, _N_EXPERT_USED, _N_FF_EXP = 4, 2, 256

# ftype name -> (LLAMA_FTYPE_* constant name, ggml type every 2-D weight should get).
# With `pure=True` llama.cpp uses the ftype's default type for every 2-D weight,
# so e.g. Q4_K_M gives plain Q4_K everywhere (no Q6_K mix).
FTYPES = {
    "f32": (None, gguf.GGMLQuantizationType.F32),
    "f16": ("LLAMA_FTYPE_MOSTLY_F16", gguf.GGMLQuantizationType.F16),
    "bf16": ("LLAMA_FTYPE_MOSTLY_BF16", gguf.GGMLQuantizationType.BF16),
    "q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", gguf.GGMLQuantizationType.Q8_0),
    "q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", gguf.GGMLQuantizationType.Q4_0),
    "q4_1": ("LLAMA_FTYPE_MOSTLY_Q4_1", gguf.GGMLQuantizationType.Q4_1),
    "q5_0": ("LLAMA_FTYPE_MOSTLY_Q5_0", gguf.GGMLQuantizationType.Q5_0),
    "q5_1": ("LLAMA_FTYPE_MOSTLY_Q5_1", gguf.GGMLQuantizationType.Q5_1),
    "q2_k": ("LLAMA_FTYPE_MOSTLY_Q2_K", gguf.GGMLQuantizationType.Q2_K),
    "q3_k": ("LLAMA_FTYPE_MOSTLY_Q3_K_M", gguf.GGMLQuantizationType.Q3_K),
    "q4_k": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", gguf.GGMLQuantizationType.Q4_K),
    "q5_k": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", gguf.GGMLQuantizationType.Q5_K),
    "q6_k": ("LLAMA_FTYPE_MOSTLY_Q6_K", gguf.GGMLQuantizationType.Q6_K),
}

# Special token ids (same layout for both archs; written explicitly into the GGUF).
UNK_ID, BOS_ID, EOS_ID, PAD_ID = gguf_vocab.UNK_ID, gguf_vocab.BOS_ID, gguf_vocab.EOS_ID, gguf_vocab.PAD_ID


def _weights(arch, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, seed, n_dense_lead=0):
    """Random weights as {gguf name: float32 array in numpy (rows, cols) order}.

    numpy shape (out, in) == ggml ne {in, out}. Matrices use std ~ 1/sqrt(fan_in)
    so every projection keeps unit-ish activations.
    """
    if arch not in ("llama", "gemma3"):
        return _weights_more(arch, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, seed, n_dense_lead)
    rng = np.random.default_rng(seed)
    hd = n_embd // n_head

    def mat(rows, cols, scale=1.0):
        return (rng.standard_normal((rows, cols)) * (scale / np.sqrt(cols))).astype(np.float32)

    def ones(n):
        return np.ones(n, dtype=np.float32)

    t = {}
    # Embedding rows have RMS ~1 for llama. gemma3 multiplies them by sqrt(n_embd)
    # and its layer outputs are RMS-normed to ~1, so there a small embedding
    # (RMS 0.25) keeps the layers, not the input token, dominating the output.
    emb_scale = 0.25 if arch == "gemma3" else np.sqrt(n_embd)
    t["token_embd.weight"] = mat(n_vocab, n_embd, emb_scale)
    t["output_norm.weight"] = ones(n_embd)
    # Untied lm head for both archs (gemma3 accepts an optional output.weight):
    # with tied weights greedy decoding just repeats the current token.
    t["output.weight"] = mat(n_vocab, n_embd, 2.0)

    for i in range(n_layer):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = ones(n_embd)
        t[p + "attn_q.weight"] = mat(n_head * hd, n_embd)
        t[p + "attn_k.weight"] = mat(n_head_kv * hd, n_embd)
        t[p + "attn_v.weight"] = mat(n_head_kv * hd, n_embd)
        t[p + "attn_output.weight"] = mat(n_embd, n_head * hd)
        t[p + "ffn_norm.weight"] = ones(n_embd)

        # Per-neuron log-normal scale shared by the gate and up rows: hidden
        # activation magnitudes then spread over ~2 orders of magnitude, which
        # is what sparse-vs-dense FFN tests need (not all neurons tiny/equal).
        s = rng.lognormal(0.0, 0.6, n_ff).astype(np.float32)
        t[p + "ffn_gate.weight"] = mat(n_ff, n_embd) * s[:, None]
        t[p + "ffn_up.weight"] = mat(n_ff, n_embd) * s[:, None]
        # Undo the average gain of s*s so the FFN output stays ~unit RMS.
        t[p + "ffn_down.weight"] = mat(n_embd, n_ff, 1.0 / float(np.sqrt(np.mean(s**4))))

        if arch == "gemma3":
            t[p + "attn_q_norm.weight"] = ones(hd)
            t[p + "attn_k_norm.weight"] = ones(hd)
            t[p + "post_attention_norm.weight"] = ones(n_embd)
            t[p + "post_ffw_norm.weight"] = ones(n_embd)
    return t


def _weights_more(arch, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, seed, n_dense_lead):
    """starcoder2 / phi3 / deepseek weights (same conventions as _weights)."""
    rng = np.random.default_rng(seed)
    hd = n_embd // n_head

    def mat(*shape, scale=1.0):
        return (rng.standard_normal(shape) * (scale / np.sqrt(shape[-1]))).astype(np.float32)

    def vec(n, std):
        return (rng.standard_normal(n) * std).astype(np.float32)

    def ones(n):
        return np.ones(n, dtype=np.float32)

    layer_norm = arch == "starcoder2"  # LayerNorm with biases; the others use RMSNorm
    t = {"token_embd.weight": mat(n_vocab, n_embd, scale=np.sqrt(n_embd)),
         "output_norm.weight": ones(n_embd),
         "output.weight": mat(n_vocab, n_embd, scale=2.0)}
    if layer_norm:
        t["output_norm.bias"] = vec(n_embd, 0.1)

    for i in range(n_layer):
        p = f"blk.{i}."
        t[p + "attn_norm.weight"] = ones(n_embd)
        if arch == "phi3":  # phi3 checkpoints carry one fused q/k/v projection
            t[p + "attn_qkv.weight"] = mat((n_head + 2 * n_head_kv) * hd, n_embd)
        else:
            t[p + "attn_q.weight"] = mat(n_head * hd, n_embd)
            t[p + "attn_k.weight"] = mat(n_head_kv * hd, n_embd)
            t[p + "attn_v.weight"] = mat(n_head_kv * hd, n_embd)
        t[p + "attn_output.weight"] = mat(n_embd, n_head * hd)
        t[p + "ffn_norm.weight"] = ones(n_embd)
        if layer_norm:
            t[p + "attn_norm.bias"] = vec(n_embd, 0.1)
            t[p + "attn_output.bias"] = vec(n_embd, 0.1)
            t[p + "ffn_norm.bias"] = vec(n_embd, 0.1)

        # per-neuron log-normal scales, as in _weights: activations spread over ~2 decades
        s = rng.lognormal(0.0, 0.6, n_ff).astype(np.float32)
        if arch == "starcoder2":
            # up + bias -> GELU -> down + bias. The up bias makes a dropped neuron's
            # GELU(bias) non-zero: the sparse path must still leave it out of down.
            t[p + "ffn_up.weight"] = mat(n_ff, n_embd) * s[:, None]
            t[p + "ffn_up.bias"] = vec(n_ff, 0.5) * s
            t[p + "ffn_down.weight"] = mat(n_embd, n_ff, scale=2.0 / float(np.sqrt(np.mean(s**2))))
            t[p + "ffn_down.bias"] = vec(n_embd, 0.1)
        elif arch == "phi3":
            # ffn_up holds [gate; up]: rows [0, n_ff) go through SiLU, rows [n_ff, 2 n_ff) multiply
            gate = mat(n_ff, n_embd) * s[:, None]
            up = mat(n_ff, n_embd) * s[:, None]
            t[p + "ffn_up.weight"] = np.concatenate([gate, up], axis=0)
            t[p + "ffn_down.weight"] = mat(n_embd, n_ff, scale=1.0 / float(np.sqrt(np.mean(s**4))))
        elif i < n_dense_lead:  # deepseek's leading dense layers: a llama SwiGLU FFN
            t[p + "ffn_gate.weight"] = mat(n_ff, n_embd) * s[:, None]
            t[p + "ffn_up.weight"] = mat(n_ff, n_embd) * s[:, None]
            t[p + "ffn_down.weight"] = mat(n_embd, n_ff, scale=1.0 / float(np.sqrt(np.mean(s**4))))
        else:  # deepseek MoE layer: router, experts, one shared expert (numpy order: expert first)
            t[p + "ffn_gate_inp.weight"] = mat(_N_EXPERT, n_embd)
            t[p + "ffn_gate_exps.weight"] = mat(_N_EXPERT, _N_FF_EXP, n_embd)
            t[p + "ffn_up_exps.weight"] = mat(_N_EXPERT, _N_FF_EXP, n_embd)
            t[p + "ffn_down_exps.weight"] = mat(_N_EXPERT, n_embd, _N_FF_EXP)
            t[p + "ffn_gate_shexp.weight"] = mat(_N_FF_EXP, n_embd)
            t[p + "ffn_up_shexp.weight"] = mat(_N_FF_EXP, n_embd)
            t[p + "ffn_down_shexp.weight"] = mat(n_embd, _N_FF_EXP)
    return t


def _write_f32(path, arch, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, n_ctx, seed, transform=None,
               n_dense_lead=0):
    w = gguf.GGUFWriter(str(path), arch)
    # a general.name containing "phi3" makes llama.cpp look up phi-3 special tokens we do not have
    w.add_name("tiny-fused-glu" if arch == "phi3" else f"tiny-{arch}")
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(n_embd // n_head)
    w.add_value_length(n_embd // n_head)
    if arch == "starcoder2":
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_layer_norm_rms_eps(1e-6 if arch == "gemma3" else 1e-5)
    if arch == "deepseek":
        w.add_leading_dense_block_count(n_dense_lead)
        w.add_expert_count(_N_EXPERT)
        w.add_expert_used_count(_N_EXPERT_USED)
        w.add_expert_shared_count(1)
        w.add_expert_feed_forward_length(_N_FF_EXP)
    if arch == "gemma3":
        w.add_rope_freq_base(1_000_000.0)
        # Sliding-window attention: local layers use window + their own rope
        # base; pattern 2 makes layer 0 local and layer 1 global, so both
        # kinds are exercised even with 2 layers.
        w.add_sliding_window(min(128, n_ctx))
        w.add_sliding_window_pattern(2)
        w.add_rope_freq_base_swa(10_000.0)
    else:
        w.add_rope_freq_base(10_000.0)
        w.add_rope_dimension_count(n_embd // n_head)

    gguf_vocab.add_spm_tokenizer(w, n_vocab)

    for name, arr in _weights(arch, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, seed, n_dense_lead).items():
        w.add_tensor(name, arr if transform is None else np.ascontiguousarray(transform(name, arr), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _quantize(src, dst, ftype_const):
    # pure: every 2-D weight (incl. token_embd/output) gets exactly this type
    llama_quantize.quantize(src, dst, ftype_const, pure=True)


def _check_ffn_types(path, n_layer, want, arch="llama", n_dense_lead=0):
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    for i in range(n_layer):
        if arch == "deepseek" and i >= n_dense_lead:
            continue  # an MoE layer: no dense FFN
        parts = ("up", "down") if arch in ("starcoder2", "phi3") else ("gate", "up", "down")
        for part in parts:
            name = f"blk.{i}.ffn_{part}.weight"
            got = types.get(name)
            if got != want:
                got_s = got.name if got is not None else "missing"
                raise ValueError(f"{path}: {name} is {got_s}, expected {want.name}")


def write_tiny_model(path, arch="llama", ftype="f32", n_layer=2, n_embd=256, n_ff=512,
                     n_head=4, n_head_kv=2, n_vocab=320, n_ctx=512, seed=0, transform=None,
                     n_dense_lead=1) -> pathlib.Path:
    """Write a tiny random-weight GGUF model to `path` and return it as a Path.

    arch: "llama" (SwiGLU) or "gemma3" (GeGLU, q/k norms, post norms, SWA); "starcoder2"
      (LayerNorm, biases, non-gated up -> GELU -> down); "phi3" (fused q/k/v, ffn_up of
      2*n_ff rows = [gate; up]); "deepseek" (layers below n_dense_lead have a dense SwiGLU FFN,
      the others 4 MoE experts (2 used, n_ff 256 each) plus one shared expert).
    ftype: a key of FTYPES. All 2-D weights get that ggml type (norms stay F32).
    Same arguments + seed give the same F32 weights.
    transform(name, array) -> array, if given, edits each F32 weight before it is written (tests
    use it to build reference models, e.g. with some FFN neurons zeroed).
    """
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if ftype not in FTYPES:
        raise ValueError(f"ftype must be one of {tuple(FTYPES)}, got {ftype!r}")
    assert n_embd % n_head == 0 and n_head % n_head_kv == 0, "bad head counts"
    want = FTYPES[ftype][1]
    # Quantized blocks run along the rows (n_embd for most weights, n_ff for
    # ffn_down); with a non-multiple llama.cpp would silently pick another type.
    block = gguf.GGML_QUANT_SIZES[want][0]
    assert n_embd % block == 0 and n_ff % block == 0, \
        f"{ftype} needs n_embd and n_ff to be multiples of {block}"

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp files live next to the target so os.replace is an atomic rename.
    tmps = []
    try:
        fd, f32_tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".f32.tmp", dir=path.parent)
        os.close(fd)
        tmps.append(f32_tmp)
        _write_f32(f32_tmp, arch, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, n_ctx, seed, transform,
                   n_dense_lead)
        out_tmp = f32_tmp
        if FTYPES[ftype][0] is not None:
            fd, out_tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".q.tmp", dir=path.parent)
            os.close(fd)
            tmps.append(out_tmp)
            _quantize(f32_tmp, out_tmp, FTYPES[ftype][0])
        _check_ffn_types(out_tmp, n_layer, want, arch, n_dense_lead)
        os.replace(out_tmp, path)
    finally:
        for t in tmps:
            if os.path.exists(t):
                os.remove(t)
    return path
