"""`glass-edge synth`: a random-weight GGUF with a real model's shapes, for speed measurements.

Decode speed depends on the shapes and types of the weights, not on their values, so a model
with, say, Llama-3.2-1B's shapes quantized to Q4_K_M by llama.cpp itself measures what the real
model would. The F16 weights are streamed to a temporary GGUF one tensor at a time (bounded
memory), then llama.cpp's quantizer writes the output with its usual type mix (e.g. Q6_K output
head in Q4_K_M, fallback types for rows that do not fit a block). Same preset + seed, same file.
"""
from __future__ import annotations

import math
import os
import pathlib
import shutil
import sys
import tempfile
import time

import gguf
import numpy as np

from . import gguf_vocab, llama_quantize
from .errors import UserError
from .synth_presets import PRESETS, QUANTS, Preset

__all__ = ["Preset", "PRESETS", "QUANTS", "tensor_specs", "write_synth_model", "synth"]

WEIGHT_STD = 0.02  # random matrices: normal(0, 0.02); norm weights are 1


# ----------------------------------------------------------------------------------------------
# tensors
# ----------------------------------------------------------------------------------------------

def tensor_specs(p: Preset) -> list:
    """[(name, numpy shape (rows, cols) or (n,), kind)] in file order; kind is "matrix" (F16
    random), "ones" (F32 norm weight), "bias" (F32 random) or "rope_freqs" (F32)."""
    hd = p.head_dim
    specs = [("token_embd.weight", (p.n_vocab, p.n_embd), "matrix")]
    if p.llama3_rope:
        specs.append(("rope_freqs.weight", (hd // 2,), "rope_freqs"))
    for i in range(p.n_layer):
        b = f"blk.{i}."
        specs += [(b + "attn_norm.weight", (p.n_embd,), "ones"),
                  (b + "attn_q.weight", (p.n_head * hd, p.n_embd), "matrix"),
                  (b + "attn_k.weight", (p.n_head_kv * hd, p.n_embd), "matrix"),
                  (b + "attn_v.weight", (p.n_head_kv * hd, p.n_embd), "matrix")]
        if p.qkv_bias:
            specs += [(b + "attn_q.bias", (p.n_head * hd,), "bias"),
                      (b + "attn_k.bias", (p.n_head_kv * hd,), "bias"),
                      (b + "attn_v.bias", (p.n_head_kv * hd,), "bias")]
        specs += [(b + "attn_output.weight", (p.n_embd, p.n_head * hd), "matrix"),
                  (b + "ffn_norm.weight", (p.n_embd,), "ones"),
                  (b + "ffn_gate.weight", (p.n_ff, p.n_embd), "matrix"),
                  (b + "ffn_up.weight", (p.n_ff, p.n_embd), "matrix"),
                  (b + "ffn_down.weight", (p.n_embd, p.n_ff), "matrix")]
    specs.append(("output_norm.weight", (p.n_embd,), "ones"))
    if not p.tied:
        specs.append(("output.weight", (p.n_vocab, p.n_embd), "matrix"))
    return specs


def _llama3_rope_factors(p: Preset, factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                         original_ctx=8192) -> np.ndarray:
    """Per-frequency divisors of Llama 3.x's rope scaling (rope_scaling in its config.json)."""
    freqs = 1.0 / p.rope_base ** (np.arange(0, p.head_dim, 2, dtype=np.float64) / p.head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (original_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    mid = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < original_ctx / high_freq_factor, 1.0,
                   np.where(wavelen > original_ctx / low_freq_factor, factor, mid))
    return out.astype(np.float32)


class _RandomF16:
    """Normal(0, WEIGHT_STD) F16 values, fast: random 16-bit indices into a table of 65536 sorted
    normal samples (≈4× faster than drawing normals and converting, for the same distribution
    up to 1/65536 quantiles)."""

    CHUNK = 1 << 24  # values per draw: bounds the index buffer to 32 MB

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.table = (np.sort(self.rng.standard_normal(65536)) * WEIGHT_STD).astype(np.float16)

    def fill(self, out: np.ndarray) -> None:
        flat = out.reshape(-1)
        for a in range(0, flat.size, self.CHUNK):
            b = min(flat.size, a + self.CHUNK)
            flat[a:b] = self.table[self.rng.integers(0, 65536, b - a, dtype=np.uint16)]


def _tensor_data(kind, shape, p: Preset, rnd: _RandomF16) -> np.ndarray:
    if kind == "matrix":
        a = np.empty(shape, dtype=np.float16)
        rnd.fill(a)
        return a
    if kind == "ones":
        return np.ones(shape, dtype=np.float32)
    if kind == "bias":
        return (rnd.rng.standard_normal(shape) * WEIGHT_STD).astype(np.float32)
    if kind == "rope_freqs":
        return _llama3_rope_factors(p)
    raise AssertionError(kind)


def _nbytes(kind, shape) -> int:
    return int(np.prod(shape)) * (2 if kind == "matrix" else 4)


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------

def _write_f16(path, name: str, p: Preset, seed: int, progress=None) -> None:
    """Stream an F16 GGUF of preset p to path; progress(n_bytes) after each tensor."""
    w = gguf.GGUFWriter(str(path), p.arch)
    w.add_name(f"synth-{name}")
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    w.add_context_length(p.n_ctx)
    w.add_embedding_length(p.n_embd)
    w.add_block_count(p.n_layer)
    w.add_feed_forward_length(p.n_ff)
    w.add_head_count(p.n_head)
    w.add_head_count_kv(p.n_head_kv)
    w.add_key_length(p.head_dim)
    w.add_value_length(p.head_dim)
    w.add_rope_dimension_count(p.head_dim)
    w.add_rope_freq_base(p.rope_base)
    w.add_layer_norm_rms_eps(p.rms_eps)
    w.add_vocab_size(p.n_vocab)
    gguf_vocab.add_spm_tokenizer(w, p.n_vocab)

    specs = tensor_specs(p)
    for tname, shape, kind in specs:
        w.add_tensor_info(tname, shape, np.dtype(np.float16 if kind == "matrix" else np.float32),
                          _nbytes(kind, shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rnd = _RandomF16(seed)
    for tname, shape, kind in specs:
        data = _tensor_data(kind, shape, p, rnd)
        w.write_tensor_data(data)
        if progress:
            progress(data.nbytes)
        del data
    w.close()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_output(path, p: Preset) -> None:
    """The quantized file holds exactly the preset's tensors with their shapes."""
    got = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in gguf.GGUFReader(str(path)).tensors}
    want = {n: tuple(s) for n, s, _ in tensor_specs(p)}
    if got != want:
        bad = sorted(set(got.items()) ^ set(want.items()))[:3]
        raise RuntimeError(f"{path}: tensors differ from the preset, e.g. {bad}")


def write_synth_model(path, preset: str, quant: str = "q4_k_m", seed: int = 0, progress: bool = True) -> pathlib.Path:
    """Write preset's random-weight model quantized as `quant` to path (temp file, then rename)."""
    from tqdm import tqdm

    p = PRESETS[preset]
    path = pathlib.Path(path)
    f16_bytes = sum(_nbytes(k, s) for _, s, k in tensor_specs(p))
    tmps = []
    try:
        fd, f16_tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".f16.tmp", dir=path.parent)
        os.close(fd)
        tmps.append(f16_tmp)
        with tqdm(total=f16_bytes, unit="B", unit_scale=True, desc=f"{preset} f16", disable=not progress,
                  file=sys.stderr, leave=False) as bar:
            _write_f16(f16_tmp, preset, p, seed, progress=bar.update)
        fd, out_tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".q.tmp", dir=path.parent)
        os.close(fd)
        tmps.append(out_tmp)
        n_tensors = len(tensor_specs(p))
        with tqdm(total=n_tensors, unit="tensor", desc=f"quantize {quant}", disable=not progress,
                  file=sys.stderr, leave=False) as bar:
            def on_tensor(i, total):  # llama.cpp announces tensor i of total as it starts it
                bar.total = total
                bar.n = i - 1
                bar.refresh()
            llama_quantize.quantize(f16_tmp, out_tmp, QUANTS[quant], pure=False,
                                    nthread=os.cpu_count() or 1, progress=on_tensor)
        _check_output(out_tmp, p)
        os.chmod(out_tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(out_tmp, path)
    finally:
        for t in tmps:
            if os.path.exists(t):
                os.remove(t)
    return path


# ----------------------------------------------------------------------------------------------
# command
# ----------------------------------------------------------------------------------------------

def synth(args) -> int:
    out = pathlib.Path(args.output)
    if out.is_dir():
        raise UserError(f"{out} is a directory; give a file name, e.g. {out / (args.preset + '.gguf')}")
    if not out.parent.is_dir():
        raise UserError(f"directory {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"cannot write to {out.parent}")
    p = PRESETS[args.preset]
    # the F16 temp file plus at most as much again for the output
    need = 2 * sum(_nbytes(k, s) for _, s, k in tensor_specs(p))
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise UserError(f"{out.parent} has {free / 2**30:.1f} GiB free; synth {args.preset} needs "
                        f"about {need / 2**30:.1f} GiB (F16 temp file + output)")
    t0 = time.perf_counter()
    write_synth_model(out, args.preset, args.quant, seed=args.seed, progress=not args.quiet)
    size = out.stat().st_size
    print(f"wrote {out} ({args.preset}, {args.quant}, {size / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f} s",
          file=sys.stderr)
    return 0
