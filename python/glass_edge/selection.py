"""Neuron selection: which FFN neurons each layer keeps for decode.

The functions here are numpy on per-layer statistic vectors (one value per FFN neuron):
  local  -- from this prompt's dense prefill (activation or impact statistic, see kernels/stats.h)
  global -- the model's prior, computed offline (prior.py), stored as ranks
A method turns them into, per layer, the ascending indices of the k = round(density * n_ff)
neurons to keep. Rank 0 is the most important neuron; ties always go to the lower index, so every
selection is deterministic.

select() runs griffin / global / a-glass / i-glass through the C++ core (src/glass_cpp/select.h:
all layers in one call, bit-identical to these numpy functions, which stay the reference) when
glass_edge._core is available, and falls back to numpy otherwise.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

METHODS = ("dense", "griffin", "global", "a-glass", "i-glass", "random")
NEEDS_LOCAL = {"griffin", "a-glass", "i-glass"}
NEEDS_PRIOR = {"global", "a-glass", "i-glass"}
# GLASS: at every density measured it is closer to dense than griffin or the prior alone (docs/method.md)
DEFAULT_METHOD = "a-glass"


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return method


def check_density(density: float) -> float:
    d = float(density)
    if not (0.0 < d <= 1.0) or d != d:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return d


def check_lambda(lam: float) -> float:
    x = float(lam)
    if not (0.0 <= x <= 1.0):
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    return x


def n_keep(density: float, n_ff: int) -> int:
    return int(min(n_ff, max(1, round(density * n_ff))))


def ranks_from_scores(scores: np.ndarray) -> np.ndarray:
    """Rank of every neuron by descending score (0 = largest); ties go to the lower index."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(scores.size), -scores))
    ranks = np.empty(scores.size, dtype=np.int64)
    ranks[order] = np.arange(scores.size)
    return ranks


def top_k_by_rank_score(rank_score: np.ndarray, k: int) -> np.ndarray:
    """Ascending indices of the k smallest rank scores (ties to the lower index)."""
    rank_score = np.asarray(rank_score, dtype=np.float64)
    order = np.lexsort((np.arange(rank_score.size), rank_score))
    return np.sort(order[:k]).astype(np.int32)


def aggregate(local_rank: np.ndarray, global_rank: np.ndarray, lam: float, k: int) -> np.ndarray:
    """Weighted Borda: score_j = lam * rank_local(j) + (1 - lam) * rank_global(j), keep the k lowest."""
    score = lam * np.asarray(local_rank, np.float64) + (1.0 - lam) * np.asarray(global_rank, np.float64)
    return top_k_by_rank_score(score, k)


def select_layer(method: str, density: float, *, local_act=None, local_imp=None,
                 global_act_rank=None, global_imp_rank=None, lam: float = 0.5,
                 n_ff: Optional[int] = None, rng: Optional[np.random.Generator] = None) -> Optional[np.ndarray]:
    """Indices kept in one layer, or None for a dense layer."""
    if method == "dense":
        return None
    if n_ff is None:
        n_ff = next(len(v) for v in (local_act, local_imp, global_act_rank, global_imp_rank) if v is not None)
    k = n_keep(density, n_ff)
    if method == "random":
        rng = rng or np.random.default_rng(0)
        return np.sort(rng.choice(n_ff, size=k, replace=False)).astype(np.int32)
    if method == "griffin":
        return top_k_by_rank_score(ranks_from_scores(local_act), k)
    if method == "global":
        return top_k_by_rank_score(global_act_rank, k)
    if method == "a-glass":
        return aggregate(ranks_from_scores(local_act), global_act_rank, lam, k)
    if method == "i-glass":
        return aggregate(ranks_from_scores(local_imp), global_imp_rank, lam, k)
    raise ValueError(f"unknown method {method!r}")


def select(method: str, density: float, *, n_ff: Sequence[int], local_act=None, local_imp=None,
           local_rows=None, prior=None, lam: float = 0.5, seed: int = 0) -> list:
    """Per-layer masks (ascending int32 indices, or None = dense) for a whole model.

    A layer whose local statistics saw no rows (an empty prompt) has nothing local to rank by: it
    stays dense under griffin, and uses the global prior alone under a-glass / i-glass.
    """
    check_method(method)
    check_density(density)
    core = _cpp() if method in _CPP_METHODS else None
    weights = _borda_weights(lam) if method in ("a-glass", "i-glass") else (1.0, 0.0)  # (unused)
    if core is None or weights is None:
        return _select_numpy(method, density, n_ff=n_ff, local_act=local_act, local_imp=local_imp,
                             local_rows=local_rows, prior=prior, lam=lam, seed=seed)
    masks = [None] * len(n_ff)
    layers, kinds, local, glob, ks = [], [], [], [], []
    for il, nf in enumerate(n_ff):
        if nf == 0:
            continue
        k = n_keep(density, nf)
        if method in NEEDS_LOCAL and (local_rows is None or local_rows[il] == 0):
            if method == "griffin" or prior is None:
                continue
            prior_rank = prior.act_rank[il] if method == "a-glass" else prior.imp_rank[il]
            kind, loc, gl = core.SELECT_TOPK_ASC, None, prior_rank
            layer_numpy = lambda: top_k_by_rank_score(prior_rank, k)  # noqa: E731
        else:
            kw = dict(local_act=None if local_act is None else local_act[il],
                      local_imp=None if local_imp is None else local_imp[il],
                      global_act_rank=None if prior is None else prior.act_rank[il],
                      global_imp_rank=None if prior is None else prior.imp_rank[il])
            kind, loc, gl = {
                "griffin": (core.SELECT_TOPK_DESC, kw["local_act"], None),
                "global": (core.SELECT_TOPK_ASC, None, kw["global_act_rank"]),
                "a-glass": (core.SELECT_BORDA, kw["local_act"], kw["global_act_rank"]),
                "i-glass": (core.SELECT_BORDA, kw["local_imp"], kw["global_imp_rank"]),
            }[method]
            layer_numpy = lambda: select_layer(method, density, n_ff=nf, lam=lam, **kw)  # noqa: E731
        loc = _as_vector(loc, nf, kind != core.SELECT_TOPK_ASC)
        gl = _as_vector(gl, nf, kind != core.SELECT_TOPK_DESC)
        if loc is False or gl is False:  # missing or misshapen statistics: numpy's result (or error)
            masks[il] = layer_numpy()
            continue
        layers.append(il)
        kinds.append(kind)
        local.append(loc)
        glob.append(gl)
        ks.append(k)
    if layers:
        for il, m in zip(layers, core.select_layers(kinds, local, glob, ks, *weights)):
            masks[il] = m
    return masks


_CPP_METHODS = {"griffin", "global", "a-glass", "i-glass"}
_CORE = None    # glass_edge._core once looked up (False: unavailable, numpy only)


def _cpp():
    """The C++ core if it can select, else None."""
    global _CORE
    if _CORE is None:
        try:
            from . import _core
        except ImportError:
            _CORE = False
        else:
            _CORE = _core if hasattr(_core, "select_layers") else False
    return _CORE or None


def _borda_weights(lam):
    """(lam, 1.0 - lam) as the doubles aggregate()'s numpy expression multiplies the float64 ranks
    by, or None when numpy would compute in another precision (e.g. a long double lam)."""
    try:
        w_global = 1.0 - lam
        if all(np.result_type(w, np.float64) == np.float64 for w in (lam, w_global)):
            return float(lam), float(w_global)
    except (TypeError, ValueError):
        pass
    return None


def _as_vector(x, n, needed):
    """x as the float64 vector numpy's functions would rank (None when not needed); False when
    it is missing or not a length-n vector, which is left to the numpy path."""
    if not needed:
        return None
    if x is None:
        return False
    v = np.asarray(x, dtype=np.float64)
    return np.ascontiguousarray(v) if v.ndim == 1 and v.size == n else False


def _select_numpy(method: str, density: float, *, n_ff: Sequence[int], local_act=None, local_imp=None,
                  local_rows=None, prior=None, lam: float = 0.5, seed: int = 0) -> list:
    """select() in numpy alone: the reference for the C++ path, and the path of `random`."""
    rng = np.random.default_rng(seed)
    masks = []
    for il, nf in enumerate(n_ff):
        if nf == 0:
            masks.append(None)
            continue
        if method in NEEDS_LOCAL and (local_rows is None or local_rows[il] == 0):
            if method == "griffin" or prior is None:
                masks.append(None)
            else:  # no local rows: the matching prior alone (activation or impact)
                prior_rank = prior.act_rank[il] if method == "a-glass" else prior.imp_rank[il]
                masks.append(top_k_by_rank_score(prior_rank, n_keep(density, nf)))
            continue
        masks.append(select_layer(
            method, density, n_ff=nf,
            local_act=None if local_act is None else local_act[il],
            local_imp=None if local_imp is None else local_imp[il],
            global_act_rank=None if prior is None else prior.act_rank[il],
            global_imp_rank=None if prior is None else prior.imp_rank[il],
            lam=lam, rng=rng))
    return masks
