"""Tiny random-weight GGUF models for tests.

`write_tiny_model()` writes a small llama or gemma3 model that stock llama.cpp
loads and runs. Weights are random with a fixed seed. The tokenizer is a small
SPM ("llama") vocab. The model is written as F32 with gguf-py and then, if
another type was asked for, quantized by llama.cpp's own quantizer (through
llama_cpp). That way the blocks are exactly what llama.cpp itself produces.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import tempfile

import gguf
import numpy as np

__all__ = ["FTYPES", "ARCHS", "write_tiny_model"]

ARCHS = ("llama", "gemma3")

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
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
_N_SPECIAL = 4

# Words whose SPM pieces go into the vocab so ordinary English does not fall
# back to byte tokens everywhere.
_WORDS = (
    "the a quick brown fox jumps over lazy dog and of to in is it that was "
    "for on with as he she they be at by this had not are but from or have "
    "an what were we when your can said there use each which do how their if "
    "will up other about out many then them these so some her would make like "
    "him into time has look two more write go see number no way could people"
).split()


def _vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """Build an SPM vocab: specials, 256 byte tokens, then word pieces."""
    T = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>", "<pad>"]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL, T.CONTROL]
    # Byte fallback: any text can be tokenized even if no piece matches.
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [T.BYTE] * 256

    # llama.cpp's SPM tokenizer merges adjacent symbols only when the merged
    # string is itself in the vocab, so each word needs all of its prefixes
    # ("▁t", "▁th", "▁the"). Single letters and "▁" come first.
    pieces = ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    for w in _WORDS:
        pieces += ["▁" + w[:k] for k in range(1, len(w) + 1)]
    # More filler if a bigger vocab is asked for: "▁ab", "▁ac", ...
    pieces += ["▁" + a + b for a in "abcdefghijklmnopqrstuvwxyz" for b in "abcdefghijklmnopqrstuvwxyz"]
    pieces = list(dict.fromkeys(pieces))  # dedupe, keep order (llama.cpp asserts unique texts)

    n_pieces = n_vocab - len(tokens)
    if n_pieces < 27:
        raise ValueError(f"n_vocab must be >= {len(tokens) + 27}")
    if n_pieces > len(pieces):
        raise ValueError(f"n_vocab must be <= {len(tokens) + len(pieces)}")
    tokens += pieces[:n_pieces]
    types += [T.NORMAL] * n_pieces
    # SPM scores: higher merges first; longer pieces score higher so whole words win.
    scores = [0.0] * (n_vocab - n_pieces) + [float(len(p)) - i * 1e-4 for i, p in enumerate(pieces[:n_pieces])]
    return tokens, scores, [int(t) for t in types]


def _weights(arch, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, seed):
    """Random weights as {gguf name: float32 array in numpy (rows, cols) order}.

    numpy shape (out, in) == ggml ne {in, out}. Matrices use std ~ 1/sqrt(fan_in)
    so every projection keeps unit-ish activations.
    """
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


def _write_f32(path, arch, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, n_ctx, seed, transform=None):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(n_embd // n_head)
    w.add_value_length(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-6 if arch == "gemma3" else 1e-5)
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

    tokens, scores, types = _vocab(n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_pad_token_id(PAD_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    for name, arr in _weights(arch, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, seed).items():
        w.add_tensor(name, arr if transform is None else np.ascontiguousarray(transform(name, arr), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _quiet_log(level, text, user_data):  # module-level so ctypes keeps it alive
    pass


def _quantize(src, dst, ftype_const):
    import llama_cpp  # imported lazily: plain f32 models need only gguf + numpy

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_const)
    params.pure = True  # every 2-D weight (incl. token_embd/output) gets exactly this type
    params.nthread = min(4, os.cpu_count() or 1)

    # llama.cpp logs every tensor while quantizing; mute it, then restore the
    # callback that was installed (llama_cpp installs its own on import).
    old_cb = llama_cpp.llama_log_callback()
    old_ud = ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(old_cb), ctypes.byref(old_ud))
    llama_cpp.llama_log_set(ctypes.cast(_quiet_log, llama_cpp.llama_log_callback), None)
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    finally:
        llama_cpp.llama_log_set(old_cb, old_ud)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc}) for {ftype_const}")


def _check_ffn_types(path, n_layer, want):
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    for i in range(n_layer):
        for part in ("gate", "up", "down"):
            name = f"blk.{i}.ffn_{part}.weight"
            got = types.get(name)
            if got != want:
                got_s = got.name if got is not None else "missing"
                raise ValueError(f"{path}: {name} is {got_s}, expected {want.name}")


def write_tiny_model(path, arch="llama", ftype="f32", n_layer=2, n_embd=256, n_ff=512,
                     n_head=4, n_head_kv=2, n_vocab=320, n_ctx=512, seed=0, transform=None) -> pathlib.Path:
    """Write a tiny random-weight GGUF model to `path` and return it as a Path.

    arch: "llama" (SwiGLU) or "gemma3" (GeGLU, q/k norms, post norms, SWA).
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
        _write_f32(f32_tmp, arch, n_layer, n_embd, n_ff, n_head, n_head_kv, n_vocab, n_ctx, seed, transform)
        out_tmp = f32_tmp
        if FTYPES[ftype][0] is not None:
            fd, out_tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".q.tmp", dir=path.parent)
            os.close(fd)
            tmps.append(out_tmp)
            _quantize(f32_tmp, out_tmp, FTYPES[ftype][0])
        _check_ffn_types(out_tmp, n_layer, want)
        os.replace(out_tmp, path)
    finally:
        for t in tmps:
            if os.path.exists(t):
                os.remove(t)
    return path
