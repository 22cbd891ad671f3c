"""The C++ kernels of glass_edge._core against numpy references.

Weights come from tiny synthetic GGUF files (one per FFN weight type), read raw with
gguf.GGUFReader and dequantized with gguf.quants.dequantize for the references.

Error measure: rel_err = max|out - ref| / scale, where scale is max|ref| of the full (dense)
product, so single-row selections are judged on the same scale as large ones.

Tolerances, and why:
  gather_matvec vs W_deq @ x (x kept in f32): the kernel first converts x to the dot product's
    "vec_dot type" of the weight type, so the error is that conversion's, not the kernel's:
      f32            1e-5  (x stays f32; float32 accumulation only)
      f16            1e-3  (x rounded to f16: unit roundoff 2^-11 ~ 4.9e-4)
      bf16           5e-3  (x rounded to bf16: unit roundoff 2^-8 ~ 3.9e-3 worst case, ~2e-3
                            typical on one dot; 1e-3 is below bf16's own precision)
      quant types    2e-2  (x quantized to Q8_0 / Q8_1 / Q8_K: 8-bit, one scale per 32 or 256)
  gather_matvec vs W_deq @ convert(x), with convert() emulating ggml's conversion of x:
      1e-5 for every type whose x type is F32/F16/BF16/Q8_0/Q8_K (float32 rounding only);
      1e-3 for Q4_1/Q5_1, whose Q8_1 x blocks also carry their sum as f16 (not emulated).
  kernel_down, packed layout (Q4_0, Q8_0, Q4_K, Q6_K; n_embd a multiple of 32) vs W_deq[:, idx] @ h[idx]:
    the original codes and scales, the same products as ggml's dequantization: only float32
    summation (codes weighted by h, then scaled per group) remains: 1e-5.
  kernel_down, int8 layout (every other type, or packed=False) vs W_deq[:, idx] @ h[idx]: 1.5e-2
    (8 bits, one float scale per 32 outputs of a neuron); vs a numpy emulation of that copy: 1e-5.
  kernel_down SIMD vs scalar path: max abs diff <= 1e-4 * max|y| (same math, FMA vs mul+add).
  col_norm vs np.linalg.norm(W_deq, axis=0): rtol 1e-4 (computed in double from W_deq).
  kernel_stats vs float64 numpy: rtol 1e-4 (float32 accumulation over a few tokens).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import gguf
import numpy as np
import pytest
from gguf.quants import dequantize

from glass_edge import _core

Q = gguf.GGMLQuantizationType

FFN_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
             "q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
K_TYPES = {Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}

# gather_matvec: relative error against W_deq @ x (x in f32), see the module docstring.
GATHER_TOL = {Q.F32: 1e-5, Q.F16: 1e-3, Q.BF16: 5e-3}
GATHER_TOL_QUANT = 2e-2
# gather_matvec: relative error against W_deq @ convert(x) (ggml's x conversion emulated).
GATHER_EXACT_TOL = 1e-5
GATHER_EXACT_TOL_Q8_1 = 1e-3          # Q4_1 / Q5_1: the f16 block sum of Q8_1 is not emulated
DOWN_TOL = 1.5e-2                     # int8 neuron-major copy vs W_deq
PACKED_TOL = {Q.Q4_0: 1e-5, Q.Q8_0: 1e-5, Q.Q4_K: 1e-5, Q.Q6_K: 1e-5}  # packed layout vs W_deq
DOWN_EMUL_TOL = 1e-5                  # vs a numpy emulation of the int8 copy
SIMD_VS_REF_TOL = 1e-4                # relative to max|y|
NORM_RTOL = 1e-4
STATS_RTOL = 1e-4


def gather_tol(t: Q) -> float:
    return GATHER_TOL.get(t, GATHER_TOL_QUANT)


def rel_err(out, ref, scale=None) -> float:
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    if scale is None:
        scale = np.max(np.abs(ref))
    assert scale > 0, "reference is all zero: the relative error would mean nothing"
    return float(np.max(np.abs(out - ref)) / scale) if out.size else 0.0


# ---------------------------------------------------------------------------------------------
# weights of the synthetic models
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Weight:
    raw: np.ndarray      # uint8, the ggml bytes of the whole tensor
    type: Q
    n_rows: int          # ggml ne[1]
    n_cols: int          # ggml ne[0] (values per row)
    W: np.ndarray        # float64 [n_rows, n_cols], dequantized by gguf-py


@pytest.fixture(scope="session")
def ffn_weight(tiny_model_factory):
    """ffn_weight(ftype, part) -> Weight of blk.0.ffn_<part>.weight of the tiny llama model."""

    @functools.lru_cache(maxsize=None)
    def get(ftype: str, part: str) -> Weight:
        path = tiny_model_factory("llama", ftype)
        reader = gguf.GGUFReader(str(path))
        (t,) = [t for t in reader.tensors if t.name == f"blk.0.ffn_{part}.weight"]
        raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1)
        W = dequantize(t.data, t.tensor_type).astype(np.float64)
        n_cols, n_rows = (int(v) for v in t.shape)
        assert W.shape == (n_rows, n_cols)
        assert raw.size == n_rows * (n_cols // gguf.GGML_QUANT_SIZES[t.tensor_type][0]) \
            * gguf.GGML_QUANT_SIZES[t.tensor_type][1]
        return Weight(raw.copy(), Q(t.tensor_type), n_rows, n_cols, W)

    return get


def test_synthetic_ffn_types(ffn_weight):
    """The synthetic models really carry each FFN weight type (else the kernel tests lie)."""
    for ftype in FFN_TYPES:
        for part in ("up", "down"):
            assert ffn_weight(ftype, part).type.name.lower() == ftype


# ---------------------------------------------------------------------------------------------
# numpy emulation of ggml's conversion of x to the vec_dot type (for the tight references)
# ---------------------------------------------------------------------------------------------

def _to_bf16(x):
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16          # round to nearest even
    return (u.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _to_q8_0(x):
    """Q8_0 (and the quants of Q8_1): per 32 values d = amax/127, q = round(x/d), d kept as f16."""
    xb = x.astype(np.float32).reshape(-1, 32)
    d = (np.abs(xb).max(axis=1) / np.float32(127)).astype(np.float32)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.rint(xb * inv[:, None])
    return (q * d.astype(np.float16).astype(np.float64)[:, None]).reshape(-1)


def _to_q8_k(x):
    """Q8_K: per 256 values, iscale = -127 / (the value of largest magnitude), d = 1/iscale (f32)."""
    xb = x.astype(np.float32).reshape(-1, 256)
    mx = xb[np.arange(len(xb)), np.abs(xb).argmax(axis=1)]
    iscale = np.where(mx != 0, np.float32(-127) / np.where(mx != 0, mx, 1), 0).astype(np.float32)
    q = np.minimum(127, np.rint(iscale[:, None] * xb))
    d = np.where(iscale != 0, np.float32(1) / np.where(iscale != 0, iscale, 1), 0).astype(np.float32)
    return (q * d.astype(np.float64)[:, None]).reshape(-1)


def x_as_dot_type(x, t: Q):
    if t == Q.F32:
        return x.astype(np.float64)
    if t == Q.F16:
        return x.astype(np.float16).astype(np.float64)
    if t == Q.BF16:
        return _to_bf16(x)
    if t in (Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.Q4_1, Q.Q5_1):
        return _to_q8_0(x)
    if t in K_TYPES:
        return _to_q8_k(x)
    raise AssertionError(f"no emulation for {t.name}")


def exact_tol(t: Q) -> float:
    return GATHER_EXACT_TOL_Q8_1 if t in (Q.Q4_1, Q.Q5_1) else GATHER_EXACT_TOL


# ---------------------------------------------------------------------------------------------
# gather_matvec
# ---------------------------------------------------------------------------------------------

def _row_set(name: str, n_rows: int) -> np.ndarray:
    if name == "empty":
        r = []
    elif name == "all":
        r = range(n_rows)
    elif name == "first":
        r = [0]
    elif name == "last":
        r = [n_rows - 1]
    elif name == "odd":                      # every third row from 1, plus the last
        r = sorted(set(range(1, n_rows, 3)) | {n_rows - 1})
    elif name == "random":
        r = np.sort(np.random.default_rng(7).choice(n_rows, size=37, replace=False))
    else:
        raise AssertionError(name)
    return np.asarray(r, dtype=np.int32)


def check_gather(out, W, x, rows, tol, x_ref=None):
    """Asserts out == W[rows] @ x at `rows` (within tol, relative to max|W @ x|) and 0 elsewhere."""
    xr = x.astype(np.float64) if x_ref is None else x_ref
    dense = W @ x.astype(np.float64)
    assert out.shape == (W.shape[0],) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    selected = np.zeros(W.shape[0], bool)
    selected[rows] = True
    assert np.all(out[~selected] == 0.0), "rows outside the selection were written"
    err = rel_err(out[rows], W[rows] @ xr, scale=np.max(np.abs(dense)))
    assert err <= tol, f"relative error {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("rowset", ["empty", "all", "first", "last", "odd", "random"])
@pytest.mark.parametrize("part", ["up", "down"])   # up: rows of 256 values; down: rows of 512
@pytest.mark.parametrize("ftype", FFN_TYPES)
def test_gather_matvec(ffn_weight, ftype, part, rowset):
    w = ffn_weight(ftype, part)
    x = np.random.default_rng(1).standard_normal(w.n_cols).astype(np.float32)
    rows = _row_set(rowset, w.n_rows)
    out = _core.kernel_gather_matvec(w.raw, int(w.type), w.n_cols, x, rows)
    check_gather(out, w.W, x, rows, gather_tol(w.type))
    # tight: against the same product with x converted the way ggml converts it
    check_gather(out, w.W, x, rows, exact_tol(w.type), x_ref=x_as_dot_type(x, w.type))


@pytest.mark.parametrize("ftype", FFN_TYPES)
def test_gather_matvec_rows_independent(ffn_weight, ftype):
    """A selected row's output does not depend on which other rows are selected (bit-exact)."""
    w = ffn_weight(ftype, "up")
    x = np.random.default_rng(2).standard_normal(w.n_cols).astype(np.float32)
    full = _core.kernel_gather_matvec(w.raw, int(w.type), w.n_cols, x, np.arange(w.n_rows, dtype=np.int32))
    for name in ("first", "last", "odd", "random"):
        rows = _row_set(name, w.n_rows)
        part = _core.kernel_gather_matvec(w.raw, int(w.type), w.n_cols, x, rows)
        np.testing.assert_array_equal(part[rows], full[rows])


def test_gather_matvec_rejects_bad_input(ffn_weight):
    w = ffn_weight("q4_0", "up")
    x = np.zeros(w.n_cols, np.float32)
    with pytest.raises(IndexError):
        _core.kernel_gather_matvec(w.raw, int(w.type), w.n_cols, x, np.array([w.n_rows], np.int32))
    with pytest.raises(IndexError):
        _core.kernel_gather_matvec(w.raw, int(w.type), w.n_cols, x, np.array([-1], np.int32))
    with pytest.raises(ValueError):   # x of the wrong length
        _core.kernel_gather_matvec(w.raw, int(w.type), w.n_cols, x[:-32], np.array([0], np.int32))
    with pytest.raises(ValueError):   # row length not a multiple of the Q4_0 block (32)
        _core.kernel_gather_matvec(w.raw, int(w.type), 48, np.zeros(48, np.float32),
                                   np.array([0], np.int32))
    with pytest.raises(ValueError):   # bytes not a whole number of rows
        _core.kernel_gather_matvec(w.raw[:-1], int(w.type), w.n_cols, x, np.array([0], np.int32))


# ---------------------------------------------------------------------------------------------
# down_axpy (with the neuron-major int8 layout built from the ggml bytes)
# ---------------------------------------------------------------------------------------------

def int8_layout_reference(W, h, idx):
    """numpy emulation of ffn_layout's int8 copy: per neuron j and block of 32 outputs,
    d = amax/127, q = rint(w * (1/d)) in float32; y = sum_j h_j * d * q."""
    W32 = W.astype(np.float32)
    n_embd, n_ff = W32.shape
    n_blk = -(-n_embd // 32)
    Wp = np.zeros((n_blk * 32, n_ff), np.float32)
    Wp[:n_embd] = W32
    Wb = Wp.reshape(n_blk, 32, n_ff)
    d = (np.abs(Wb).max(axis=1) / np.float32(127)).astype(np.float32)          # [n_blk, n_ff]
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.rint(Wb * inv[:, None, :])
    Wq = (q * d[:, None, :].astype(np.float64)).reshape(n_blk * 32, n_ff)[:n_embd]
    return Wq[:, idx] @ h[idx].astype(np.float64)


def check_down(y, W, h, idx, tol):
    ref = W[:, idx] @ h[idx].astype(np.float64)
    assert y.shape == (W.shape[0],) and np.all(np.isfinite(y))
    err = rel_err(y, ref)
    assert err <= tol, f"relative error {err:.3g} > {tol:.3g}"


def _down_inputs(n_ff, seed):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal(n_ff).astype(np.float32)
    idx = np.sort(rng.choice(n_ff, size=max(1, n_ff * 2 // 5), replace=False)).astype(np.int32)
    h[idx[::7]] = 0.0                      # selected neurons with h == 0 (skipped by the kernel)
    return h, idx


@pytest.mark.parametrize("ftype", FFN_TYPES)
def test_down(ffn_weight, ftype):
    w = ffn_weight(ftype, "down")
    n_embd, n_ff = w.n_rows, w.n_cols
    h, idx = _down_inputs(n_ff, seed=3)
    y, col_norm, packed = _core.kernel_down(w.raw, int(w.type), n_ff, n_embd, h, idx, reference=False)
    y_ref, col_norm_ref, packed_ref = _core.kernel_down(w.raw, int(w.type), n_ff, n_embd, h, idx, reference=True)

    assert packed == packed_ref == (w.type in PACKED_TOL and n_embd % 32 == 0)
    if packed:   # the original codes: close to the dequantized weights themselves
        check_down(y, w.W, h, idx, PACKED_TOL[w.type])
    else:
        check_down(y, w.W, h, idx, DOWN_TOL)
        assert rel_err(y, int8_layout_reference(w.W, h, idx)) <= DOWN_EMUL_TOL
    np.testing.assert_allclose(col_norm, np.linalg.norm(w.W, axis=0), rtol=NORM_RTOL)
    np.testing.assert_array_equal(col_norm, col_norm_ref)
    assert np.max(np.abs(y - y_ref)) <= SIMD_VS_REF_TOL * np.max(np.abs(y))


@pytest.mark.parametrize("ftype", ["q8_0", "q4_0", "q4_k", "q6_k"])
def test_down_int8_when_asked(ffn_weight, ftype):
    """packed=False builds the int8 copy for a packable type (the fallback path stays tested)."""
    w = ffn_weight(ftype, "down")
    n_embd, n_ff = w.n_rows, w.n_cols
    h, idx = _down_inputs(n_ff, seed=5)
    y, _, packed = _core.kernel_down(w.raw, int(w.type), n_ff, n_embd, h, idx, packed=False)
    assert not packed
    check_down(y, w.W, h, idx, DOWN_TOL)
    assert rel_err(y, int8_layout_reference(w.W, h, idx)) <= DOWN_EMUL_TOL


@pytest.mark.parametrize("ftype", ["q8_0", "q4_0", "q4_k", "q6_k"])
def test_down_packed_reads_only_kept_neurons(ffn_weight, ftype):
    """Unselected neurons' activations are never read (NaN there changes nothing), and a single
    neuron per scale group, or every neuron, gives the same result as the dense reference."""
    w = ffn_weight(ftype, "down")
    n_embd, n_ff = w.n_rows, w.n_cols
    rng = np.random.default_rng(6)
    h = rng.standard_normal(n_ff).astype(np.float32)
    for idx in (np.arange(0, n_ff, 32, dtype=np.int32), np.arange(5, n_ff, 17, dtype=np.int32),
                np.arange(n_ff, dtype=np.int32)):
        h_poisoned = np.full(n_ff, np.nan, np.float32)
        h_poisoned[idx] = h[idx]
        for ref_path in (False, True):
            y, _, packed = _core.kernel_down(w.raw, int(w.type), n_ff, n_embd, h_poisoned, idx, reference=ref_path)
            assert packed
            check_down(y, w.W, h, idx, PACKED_TOL[w.type])


@pytest.mark.parametrize("ftype", ["f32", "q8_0", "q4_k", "q6_k"])
def test_down_empty_and_all(ffn_weight, ftype):
    w = ffn_weight(ftype, "down")
    n_embd, n_ff = w.n_rows, w.n_cols
    h = np.random.default_rng(4).standard_normal(n_ff).astype(np.float32)
    for ref_path in (False, True):
        y, _, _ = _core.kernel_down(w.raw, int(w.type), n_ff, n_embd, h, np.zeros(0, np.int32), reference=ref_path)
        np.testing.assert_array_equal(y, np.zeros(n_embd, np.float32))
        idx = np.arange(n_ff, dtype=np.int32)
        y, _, _ = _core.kernel_down(w.raw, int(w.type), n_ff, n_embd, h, idx, reference=ref_path)
        check_down(y, w.W, h, idx, DOWN_TOL)


@pytest.mark.parametrize("n_embd,n_ff", [(80, 96), (20, 40), (33, 64), (32, 7), (1, 5)])
def test_down_f32_odd_shapes(n_embd, n_ff):
    """n_embd not a multiple of 32 (padded last block), from raw F32 bytes (ggml type 0)."""
    rng = np.random.default_rng(n_embd * 1000 + n_ff)
    W = (rng.standard_normal((n_embd, n_ff)) / np.sqrt(n_ff)).astype(np.float32)
    raw = W.view(np.uint8).reshape(-1)
    h, idx = _down_inputs(n_ff, seed=n_ff)
    assert np.any(h[idx] == 0.0)
    # neurons that are not selected must not be read: poison their activations
    h_poisoned = np.full(n_ff, np.nan, np.float32)
    h_poisoned[idx] = h[idx]
    W64 = W.astype(np.float64)
    outs = []
    for ref_path in (False, True):
        y, col_norm, _ = _core.kernel_down(raw, 0, n_ff, n_embd, h_poisoned, idx, reference=ref_path)
        check_down(y, W64, h, idx, DOWN_TOL)
        assert rel_err(y, int8_layout_reference(W64, h, idx)) <= DOWN_EMUL_TOL
        np.testing.assert_allclose(col_norm, np.linalg.norm(W64, axis=0), rtol=NORM_RTOL)
        outs.append(y)
    assert np.max(np.abs(outs[0] - outs[1])) <= SIMD_VS_REF_TOL * np.max(np.abs(outs[0]))


def test_down_zero_activation_is_skipped():
    """Selecting extra neurons whose h is 0 changes nothing (bit-exact)."""
    n_embd, n_ff = 80, 96
    rng = np.random.default_rng(5)
    W = rng.standard_normal((n_embd, n_ff)).astype(np.float32)
    raw = W.view(np.uint8).reshape(-1)
    h = rng.standard_normal(n_ff).astype(np.float32)
    zeros = np.array([3, 50, 95], np.int32)
    h[zeros] = 0.0
    base = np.array([1, 10, 20, 60], np.int32)
    both = np.union1d(base, zeros).astype(np.int32)
    for ref_path in (False, True):
        y0, _, _ = _core.kernel_down(raw, 0, n_ff, n_embd, h, base, reference=ref_path)
        y1, _, _ = _core.kernel_down(raw, 0, n_ff, n_embd, h, both, reference=ref_path)
        np.testing.assert_array_equal(y0, y1)


def test_down_rejects_bad_sizes():
    W = np.zeros((80, 96), np.float32)
    raw = W.view(np.uint8).reshape(-1)
    with pytest.raises(ValueError):   # h of the wrong length
        _core.kernel_down(raw, 0, 96, 80, np.zeros(95, np.float32), np.zeros(0, np.int32))
    with pytest.raises(ValueError):   # bytes do not match n_ff x n_embd
        _core.kernel_down(raw[:-4], 0, 96, 80, np.zeros(96, np.float32), np.zeros(0, np.int32))


def test_down_path_name():
    assert _core.down_axpy_path() in ("avx512", "avx2", "neon", "scalar")
    assert _core.down_packed_path() in ("avx512", "avx2", "neon", "scalar")


# ---------------------------------------------------------------------------------------------
# stats
# ---------------------------------------------------------------------------------------------

def stats_reference(h, col_norm):
    """act_j = sum_t (h_tj / ||h_t||)^2, imp_j = sum_t (h_tj c_j / ||h_t * c||)^2, a token with a
    zero norm contributing 0."""
    h = h.astype(np.float64)
    hc = h * col_norm.astype(np.float64)[None, :]
    na = np.linalg.norm(h, axis=1, keepdims=True)
    ni = np.linalg.norm(hc, axis=1, keepdims=True)
    a = np.divide(h, na, out=np.zeros_like(h), where=na > 0)
    i = np.divide(hc, ni, out=np.zeros_like(hc), where=ni > 0)
    return (a ** 2).sum(axis=0), (i ** 2).sum(axis=0)


def _stats_inputs(n_tok, n_ff, seed):
    rng = np.random.default_rng(seed)
    h = (rng.standard_normal((n_tok, n_ff)) * rng.lognormal(0, 1, n_ff)).astype(np.float32)
    h[:, rng.choice(n_ff, 3, replace=False)] = 0.0     # dead neurons
    c = rng.lognormal(0, 0.5, n_ff).astype(np.float32)
    return h, c


@pytest.mark.parametrize("n_tok,n_ff", [(1, 64), (7, 300), (16, 512), (5, 33)])
def test_stats(n_tok, n_ff):
    h, c = _stats_inputs(n_tok, n_ff, seed=n_tok * 7 + n_ff)
    zero_tok = n_tok // 2
    h[zero_tok] = 0.0
    act, imp = _core.kernel_stats(h, c)
    assert act.shape == imp.shape == (n_ff,)
    assert np.all(np.isfinite(act)) and np.all(np.isfinite(imp))
    act_ref, imp_ref = stats_reference(h, c)
    np.testing.assert_allclose(act, act_ref, rtol=STATS_RTOL)
    np.testing.assert_allclose(imp, imp_ref, rtol=STATS_RTOL)
    # every non-zero token adds a unit vector's squares: the sums count those tokens
    n_live = n_tok - 1
    assert act.sum() == pytest.approx(n_live, rel=1e-5)
    assert imp.sum() == pytest.approx(n_live, rel=1e-5)


def test_stats_zero_token_contributes_nothing():
    h, c = _stats_inputs(6, 200, seed=11)
    act0, imp0 = _core.kernel_stats(h, c)
    hz = np.insert(h, [0, 3, 6], 0.0, axis=0)          # zero tokens first, middle and last
    act1, imp1 = _core.kernel_stats(hz, c)
    np.testing.assert_array_equal(act0, act1)
    np.testing.assert_array_equal(imp0, imp1)
    act, imp = _core.kernel_stats(np.zeros((4, 50), np.float32), np.ones(50, np.float32))
    np.testing.assert_array_equal(act, np.zeros(50, np.float32))
    np.testing.assert_array_equal(imp, np.zeros(50, np.float32))


def test_stats_token_with_zero_impact_norm():
    """A token active only on neurons whose column norm is 0: counts for act, not for imp."""
    n_ff = 40
    h, c = _stats_inputs(3, n_ff, seed=12)
    c[:5] = 0.0
    h[1] = 0.0
    h[1, :5] = [1.0, -2.0, 0.5, 3.0, 0.25]
    act, imp = _core.kernel_stats(h, c)
    act_ref, imp_ref = stats_reference(h, c)
    assert np.all(np.isfinite(imp))
    np.testing.assert_allclose(act, act_ref, rtol=STATS_RTOL)
    np.testing.assert_allclose(imp, imp_ref, rtol=STATS_RTOL)
    assert act.sum() == pytest.approx(3.0, rel=1e-5)
    assert imp.sum() == pytest.approx(2.0, rel=1e-5)


def test_stats_rejects_bad_shapes():
    with pytest.raises(ValueError):
        _core.kernel_stats(np.zeros(8, np.float32), np.ones(8, np.float32))
    with pytest.raises(ValueError):
        _core.kernel_stats(np.zeros((2, 8), np.float32), np.ones(7, np.float32))


# ---------------------------------------------------------------------------------------------
# the checks above can fail: a wrong reference is caught
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ftype", ["f32", "q4_0", "q4_k"])
def test_wrong_reference_is_caught(ffn_weight, ftype):
    rng = np.random.default_rng(9)

    # gather_matvec: output for rows A, reference built for the same number of other rows
    w = ffn_weight(ftype, "up")
    x = rng.standard_normal(w.n_cols).astype(np.float32)
    perm = rng.permutation(w.n_rows).astype(np.int32)
    rows_a, rows_b = np.sort(perm[:50]), np.sort(perm[50:100])
    out = _core.kernel_gather_matvec(w.raw, int(w.type), w.n_cols, x, rows_a)
    check_gather(out, w.W, x, rows_a, gather_tol(w.type))
    with pytest.raises(AssertionError):
        check_gather(out, w.W, x, rows_b, gather_tol(w.type))
    # right rows, but a reference with the values of the next rows (an off-by-one row stride)
    shifted = np.roll(w.W, -1, axis=0)
    with pytest.raises(AssertionError):
        check_gather(out, shifted, x, rows_a, gather_tol(w.type))
    if w.type not in (Q.F32,):
        # the tight check notices when x's conversion is not accounted for
        err = rel_err(out[rows_a], w.W[rows_a] @ x.astype(np.float64),
                      scale=np.max(np.abs(w.W @ x.astype(np.float64))))
        assert err > exact_tol(w.type)

    # down: output for neurons A, reference for neurons B
    w = ffn_weight(ftype, "down")
    h = rng.standard_normal(w.n_cols).astype(np.float32)
    perm = rng.permutation(w.n_cols).astype(np.int32)
    idx_a, idx_b = np.sort(perm[:100]), np.sort(perm[100:200])
    y, col_norm, _ = _core.kernel_down(w.raw, int(w.type), w.n_cols, w.n_rows, h, idx_a)
    check_down(y, w.W, h, idx_a, DOWN_TOL)
    with pytest.raises(AssertionError):
        check_down(y, w.W, h, idx_b, DOWN_TOL)
    with pytest.raises(AssertionError):   # the row norms instead of the column norms
        np.testing.assert_allclose(col_norm[: w.n_rows], np.linalg.norm(w.W, axis=1), rtol=NORM_RTOL)

    # stats: reference with the column norms permuted / tokens' neurons reversed
    h, c = _stats_inputs(5, 128, seed=13)
    act, imp = _core.kernel_stats(h, c)
    act_ref, imp_ref = stats_reference(h, c)
    np.testing.assert_allclose(imp, imp_ref, rtol=STATS_RTOL)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(imp, stats_reference(h, c[::-1])[1], rtol=STATS_RTOL)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(act, stats_reference(h[:, ::-1], c)[0], rtol=STATS_RTOL)
