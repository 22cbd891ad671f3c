"""selection.py: ranks, Borda aggregation, per-layer methods, argument checks (numpy only)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from glass_edge import selection as sel


def topk_reference(scores, k):
    """Ascending indices of the k largest scores, ties to the lower index (stable sort)."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    return np.sort(order[:k])


def random_stats(n_ff, seed, ties=False):
    rng = np.random.default_rng(seed)
    if ties:   # few distinct values: many ties
        act = rng.integers(0, 5, n_ff).astype(np.float64)
        imp = rng.integers(0, 5, n_ff).astype(np.float64)
    else:
        act = rng.lognormal(0, 1, n_ff)
        imp = rng.lognormal(0, 1, n_ff)
    return act, imp, rng.permutation(n_ff), rng.permutation(n_ff)


def select_kwargs(act, imp, g_act, g_imp):
    """The statistics of random_stats as select_layer's keyword arguments."""
    return dict(local_act=act, local_imp=imp, global_act_rank=g_act, global_imp_rank=g_imp)


SEEDS = (0, 1, 2, 3)
DENSITIES = (0.01, 0.1, 0.25, 0.4, 0.5, 0.7, 0.999, 1.0)
N_FF = (1, 7, 100, 512)


# ---------------------------------------------------------------------------------------------
# ranks and aggregation
# ---------------------------------------------------------------------------------------------

def test_ranks_from_scores_ties_to_lower_index():
    # scores 3,1,3,2: the two 3s rank 0 (index 0) and 1 (index 2), then 2 (index 3), then 1
    np.testing.assert_array_equal(sel.ranks_from_scores([3.0, 1.0, 3.0, 2.0]), [0, 3, 1, 2])
    np.testing.assert_array_equal(sel.ranks_from_scores(np.zeros(6)), np.arange(6))
    np.testing.assert_array_equal(sel.ranks_from_scores([1, 2, 3, 4]), [3, 2, 1, 0])
    np.testing.assert_array_equal(sel.ranks_from_scores([5.0]), [0])


@pytest.mark.parametrize("seed", SEEDS)
def test_ranks_from_scores_random(seed):
    scores = np.random.default_rng(seed).integers(0, 10, 300).astype(np.float64)
    ranks = sel.ranks_from_scores(scores)
    np.testing.assert_array_equal(np.sort(ranks), np.arange(300))   # a permutation
    order = np.argsort(-scores, kind="stable")
    np.testing.assert_array_equal(ranks[order], np.arange(300))
    # within equal scores the lower index always has the lower rank
    for v in np.unique(scores):
        r = ranks[scores == v]
        assert np.all(np.diff(r) > 0)


def test_top_k_by_rank_score():
    out = sel.top_k_by_rank_score([4.0, 0.0, 3.0, 1.0, 2.0], 3)   # the three smallest: 0, 1, 2
    np.testing.assert_array_equal(out, [1, 3, 4])
    assert out.dtype == np.int32
    np.testing.assert_array_equal(sel.top_k_by_rank_score([1.0, 1.0, 1.0, 0.5], 2), [0, 3])


def test_aggregate_equal_scores():
    # lam = 0.5, local = [0,1,2,3], global = [3,2,1,0]:
    # score_j = 0.5*l + 0.5*g = 1.5 for every j -> all tie -> the lowest indices
    out = sel.aggregate(np.array([0, 1, 2, 3]), np.array([3, 2, 1, 0]), 0.5, 2)
    np.testing.assert_array_equal(out, [0, 1])
    assert out.dtype == np.int32


def test_aggregate_lambda_quarter():
    # lam = 0.25, local = [0,2,1,3,4], global = [4,0,1,2,3]; score = 0.25*l + 0.75*g:
    #   j0: 0    + 3    = 3.0
    #   j1: 0.5  + 0    = 0.5
    #   j2: 0.25 + 0.75 = 1.0
    #   j3: 0.75 + 1.5  = 2.25
    #   j4: 1.0  + 2.25 = 3.25
    # ascending: j1 (0.5), j2 (1.0), j3 (2.25), j0 (3.0), j4 (3.25)
    local, glob = np.array([0, 2, 1, 3, 4]), np.array([4, 0, 1, 2, 3])
    np.testing.assert_array_equal(sel.aggregate(local, glob, 0.25, 1), [1])
    np.testing.assert_array_equal(sel.aggregate(local, glob, 0.25, 2), [1, 2])
    np.testing.assert_array_equal(sel.aggregate(local, glob, 0.25, 3), [1, 2, 3])
    np.testing.assert_array_equal(sel.aggregate(local, glob, 0.25, 4), [0, 1, 2, 3])


def test_aggregate_lambda_three_quarters_with_tie():
    # lam = 0.75, same ranks; score = 0.75*l + 0.25*g:
    #   j0: 0    + 1.0  = 1.0
    #   j1: 1.5  + 0    = 1.5
    #   j2: 0.75 + 0.25 = 1.0
    #   j3: 2.25 + 0.5  = 2.75
    #   j4: 3.0  + 0.75 = 3.75
    # j0 and j2 tie at 1.0: k = 1 keeps j0 (lower index); k = 2 keeps both; k = 3 adds j1
    local, glob = np.array([0, 2, 1, 3, 4]), np.array([4, 0, 1, 2, 3])
    np.testing.assert_array_equal(sel.aggregate(local, glob, 0.75, 1), [0])
    np.testing.assert_array_equal(sel.aggregate(local, glob, 0.75, 2), [0, 2])
    np.testing.assert_array_equal(sel.aggregate(local, glob, 0.75, 3), [0, 1, 2])


def test_aggregate_all_tied_large():
    # n = 1000, local = 0..999, global = 999..0, lam = 0.5: every score is 499.5 -> the first k
    n = 1000
    out = sel.aggregate(np.arange(n), np.arange(n)[::-1].copy(), 0.5, 300)
    np.testing.assert_array_equal(out, np.arange(300))


@pytest.mark.parametrize("seed", SEEDS)
def test_aggregate_random_ranks(seed):
    # two random rank permutations: lam*l + (1-lam)*g has many ties (half-integers for lam = 0.5)
    rng = np.random.default_rng(seed)
    n = 500
    local, glob = rng.permutation(n), rng.permutation(n)
    for lam in (0.0, 0.25, 0.5, 0.75, 1.0):
        score = lam * local + (1 - lam) * glob
        for k in (1, 17, 250, n):
            want = np.sort(np.argsort(score, kind="stable")[:k])
            np.testing.assert_array_equal(sel.aggregate(local, glob, lam, k), want)


# ---------------------------------------------------------------------------------------------
# select_layer
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_griffin_is_top_k_of_local_act(seed, ties):
    n_ff = 200
    act, imp, _, _ = random_stats(n_ff, seed, ties)
    for d in DENSITIES:
        k = sel.n_keep(d, n_ff)
        out = sel.select_layer("griffin", d, local_act=act, local_imp=imp)
        np.testing.assert_array_equal(out, topk_reference(act, k))
        assert out.dtype == np.int32


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_glass_limits(seed, ties):
    """a-glass with lam = 1 is griffin, with lam = 0 it is global."""
    n_ff = 300
    act, imp, g_act, g_imp = random_stats(n_ff, seed, ties)
    kw = select_kwargs(act, imp, g_act, g_imp)
    for d in DENSITIES:
        griffin = sel.select_layer("griffin", d, **kw)
        glob = sel.select_layer("global", d, **kw)
        np.testing.assert_array_equal(sel.select_layer("a-glass", d, lam=1.0, **kw), griffin)
        np.testing.assert_array_equal(sel.select_layer("a-glass", d, lam=0.0, **kw), glob)
        # global keeps the k best prior ranks
        np.testing.assert_array_equal(glob, np.sort(np.argsort(g_act)[: sel.n_keep(d, n_ff)]))


@pytest.mark.parametrize("seed", SEEDS)
def test_a_glass_in_between_differs(seed):
    """Guard for the limit test: lam = 0.5 is neither pure source (else the limits prove nothing)."""
    n_ff = 300
    act, imp, g_act, g_imp = random_stats(n_ff, seed)
    kw = select_kwargs(act, imp, g_act, g_imp)
    mid = sel.select_layer("a-glass", 0.3, lam=0.5, **kw)
    assert not np.array_equal(mid, sel.select_layer("griffin", 0.3, **kw))
    assert not np.array_equal(mid, sel.select_layer("global", 0.3, **kw))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_i_glass_limits(seed, ties):
    """i-glass with lam = 1 is the top-k of the local impact; lam = 0 the best prior impact ranks."""
    n_ff = 300
    act, imp, g_act, g_imp = random_stats(n_ff, seed, ties)
    kw = select_kwargs(act, imp, g_act, g_imp)
    for d in DENSITIES:
        k = sel.n_keep(d, n_ff)
        np.testing.assert_array_equal(sel.select_layer("i-glass", d, lam=1.0, **kw), topk_reference(imp, k))
        np.testing.assert_array_equal(sel.select_layer("i-glass", d, lam=0.0, **kw),
                                      np.sort(np.argsort(g_imp)[:k]))
    # it really reads the impact statistic, not the activation one
    assert not np.array_equal(sel.select_layer("i-glass", 0.3, lam=1.0, **kw),
                              sel.select_layer("griffin", 0.3, **kw))


@pytest.mark.parametrize("method", ["griffin", "global", "a-glass", "i-glass", "random"])
@pytest.mark.parametrize("n_ff", N_FF)
def test_select_layer_returns_k_unique_sorted(method, n_ff):
    act, imp, g_act, g_imp = random_stats(n_ff, 5)
    for d in DENSITIES:
        out = sel.select_layer(method, d, local_act=act, local_imp=imp,
                               global_act_rank=g_act, global_imp_rank=g_imp, lam=0.5)
        assert out.dtype == np.int32
        assert len(out) == sel.n_keep(d, n_ff)
        assert np.all(np.diff(out) > 0)
        assert out.min() >= 0 and out.max() < n_ff


def test_dense_is_none():
    assert sel.select_layer("dense", 0.5, local_act=np.ones(8)) is None


def test_select_layer_unknown_method():
    with pytest.raises(ValueError):
        sel.select_layer("bogus", 0.5, local_act=np.ones(8))


# ---------------------------------------------------------------------------------------------
# random
# ---------------------------------------------------------------------------------------------

def test_random_deterministic_unique_sorted():
    n_ff, d = 512, 0.3
    k = sel.n_keep(d, n_ff)
    a = sel.select_layer("random", d, n_ff=n_ff, rng=np.random.default_rng(42))
    b = sel.select_layer("random", d, n_ff=n_ff, rng=np.random.default_rng(42))
    c = sel.select_layer("random", d, n_ff=n_ff, rng=np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    for out in (a, c):
        assert out.dtype == np.int32 and len(out) == k
        assert len(np.unique(out)) == k and np.all(np.diff(out) > 0)
        assert out.min() >= 0 and out.max() < n_ff
    # without an rng it is still deterministic
    np.testing.assert_array_equal(sel.select_layer("random", d, n_ff=n_ff),
                                  sel.select_layer("random", d, n_ff=n_ff))
    # and select() is deterministic for a seed
    m1 = sel.select("random", d, n_ff=[n_ff, n_ff], seed=7)
    m2 = sel.select("random", d, n_ff=[n_ff, n_ff], seed=7)
    m3 = sel.select("random", d, n_ff=[n_ff, n_ff], seed=8)
    for x, y in zip(m1, m2):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(m1[0], m3[0])


# ---------------------------------------------------------------------------------------------
# n_keep and argument checks
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("density,n_ff,k", [
    (0.5, 512, 256),
    (1.0, 7, 7),
    (1.0, 1, 1),
    (0.3, 10, 3),        # 0.3 * 10 = 3.0000000000000004
    (0.7, 10, 7),        # 0.7 * 10 = 7.000000000000001
    (0.34, 3, 1),        # 1.02
    (0.4, 3, 1),         # 1.2
    (0.6, 3, 2),         # 1.8
    (0.01, 10, 1),       # 0.1 rounds to 0: at least one neuron
    (1e-9, 100, 1),
    (0.999, 1000, 999),
    (0.9999, 1000, 1000),  # 999.9
])
def test_n_keep(density, n_ff, k):
    assert sel.n_keep(density, n_ff) == k


def test_n_keep_bounds():
    for n_ff in range(1, 60):
        for d in np.linspace(1e-4, 1.0, 57):
            k = sel.n_keep(float(d), n_ff)
            assert isinstance(k, int)
            assert 1 <= k <= n_ff
            if d * n_ff >= 1:
                assert abs(k - d * n_ff) <= 0.5 + 1e-9


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, 1.0000001, math.nan, math.inf, -math.inf])
def test_check_density_rejects(bad):
    with pytest.raises(ValueError):
        sel.check_density(bad)


@pytest.mark.parametrize("good", [1.0, 1, 0.5, 1e-6])
def test_check_density_accepts(good):
    assert sel.check_density(good) == float(good)


@pytest.mark.parametrize("bad", ["", "Griffin", "aglass", "a_glass", "glass", "sparse", "dense "])
def test_check_method_rejects(bad):
    with pytest.raises(ValueError):
        sel.check_method(bad)


def test_check_method_accepts_all_methods():
    assert set(sel.METHODS) == {"dense", "griffin", "global", "a-glass", "i-glass", "random"}
    for m in sel.METHODS:
        assert sel.check_method(m) == m


def test_check_lambda():
    for good in (0.0, 0.25, 1.0):
        assert sel.check_lambda(good) == good
    for bad in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError):
            sel.check_lambda(bad)


# ---------------------------------------------------------------------------------------------
# select(): whole models, with a stand-in prior
# ---------------------------------------------------------------------------------------------

def make_prior(n_ffs, seed=0):
    """Stand-in for the prior object: per-layer rank arrays act_rank / imp_rank."""
    rng = np.random.default_rng(seed)
    return SimpleNamespace(act_rank=[rng.permutation(n) for n in n_ffs],
                           imp_rank=[rng.permutation(n) for n in n_ffs])


def test_select_per_layer_matches_select_layer():
    n_ffs = [64, 0, 96]
    prior = make_prior(n_ffs)
    rng = np.random.default_rng(3)
    act = [rng.lognormal(0, 1, n) for n in n_ffs]
    imp = [rng.lognormal(0, 1, n) for n in n_ffs]
    rows = [5, 0, 5]
    for method in ("griffin", "global", "a-glass", "i-glass"):
        masks = sel.select(method, 0.4, n_ff=n_ffs, local_act=act, local_imp=imp,
                           local_rows=rows, prior=prior, lam=0.25)
        assert len(masks) == 3 and masks[1] is None     # a layer without FFN stays dense
        for il in (0, 2):
            want = sel.select_layer(method, 0.4, local_act=act[il], local_imp=imp[il],
                                    global_act_rank=prior.act_rank[il],
                                    global_imp_rank=prior.imp_rank[il], lam=0.25)
            np.testing.assert_array_equal(masks[il], want)
    assert sel.select("dense", 0.4, n_ff=n_ffs) == [None, None, None]


def test_select_global_uses_prior_ranks():
    n_ffs = [10, 20]
    prior = make_prior(n_ffs, seed=1)
    masks = sel.select("global", 0.5, n_ff=n_ffs, prior=prior)
    for il, n in enumerate(n_ffs):
        np.testing.assert_array_equal(masks[il], np.sort(np.argsort(prior.act_rank[il])[: n // 2]))


def test_select_griffin_without_local_rows_is_dense():
    n_ffs = [16, 16]
    act = [np.arange(16.0), np.zeros(16)]
    masks = sel.select("griffin", 0.5, n_ff=n_ffs, local_act=act, local_imp=act, local_rows=[3, 0])
    np.testing.assert_array_equal(masks[0], np.arange(8, 16))
    assert masks[1] is None
    assert sel.select("griffin", 0.5, n_ff=n_ffs, local_act=act, local_imp=act) == [None, None]


def test_select_rejects_bad_arguments():
    with pytest.raises(ValueError):
        sel.select("bogus", 0.5, n_ff=[8])
    with pytest.raises(ValueError):
        sel.select("griffin", 0.0, n_ff=[8])
