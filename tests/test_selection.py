"""selection.py: ranks, Borda aggregation, per-layer methods, argument checks (numpy), and the C++
path (glass_edge._core.select_*) checked bit for bit against the numpy reference."""
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


# ---------------------------------------------------------------------------------------------
# the C++ path (src/glass_cpp/select.h): bit-identical to the numpy functions above
# ---------------------------------------------------------------------------------------------

from fractions import Fraction  # noqa: E402

CPP_N_FF = (1, 7, 100, 512, 8192)
CPP_DENSITIES = (0.01, 0.05, 0.1, 0.25, 0.4, 0.5, 0.7, 0.9, 0.999, 1.0)
CPP_LAMS = (0.0, 0.25, 0.5, 1.0)


@pytest.fixture
def core():
    c = sel._cpp()
    if c is None:
        pytest.skip("glass_edge._core has no selection kernels")
    return c


def odd_stats(n, seed):
    """Statistics with NaN, +-inf, -0.0, denormals and huge values among ordinary ones and ties."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, n).astype(np.float64)
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 5e-324, -5e-324, 1.7e308, 1e-300])
    pos = rng.random(n) < 0.3
    x[pos] = rng.choice(specials, int(pos.sum()))
    return x


def stat_kinds(n, seed):
    """(name, float64 vector): the shapes statistics come in, plus adversarial ones."""
    rng = np.random.default_rng(seed)
    return [
        ("lognormal", rng.lognormal(0, 1, n)),
        ("float32", rng.lognormal(0, 2, n).astype(np.float32).astype(np.float64)),  # what GlassLlama gives
        ("ties", rng.integers(0, 5, n).astype(np.float64)),
        ("all-equal", np.full(n, 3.0)),
        ("odd", odd_stats(n, seed)),
    ]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", CPP_N_FF)
def test_cpp_ranks_equal_numpy(core, n, seed):
    for name, x in stat_kinds(n, seed):
        got = core.select_ranks(x)
        assert got.dtype == np.int64
        assert np.array_equal(got, sel.ranks_from_scores(x)), name


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", CPP_N_FF)
def test_cpp_topk_equal_numpy(core, n, seed):
    ks = sorted({0, 1, 2, n // 3, n // 2, max(n - 1, 0), n} | {sel.n_keep(d, n) for d in CPP_DENSITIES})
    for name, x in stat_kinds(n, seed) + [("permutation", np.random.default_rng(seed).permutation(n))]:
        for k in ks:
            got = core.select_topk(x, k)
            assert got.dtype == np.int32
            assert np.array_equal(got, sel.top_k_by_rank_score(x, k)), (name, k)


def test_cpp_specials_order():
    """numpy's order, which the C++ keys copy: NaNs (any sign) last and equal, -0.0 == 0.0."""
    x = np.array([1.0, np.nan, 2.0, -np.nan, np.inf, -np.inf, 0.0, -0.0, 0.0])
    want = [2, 7, 1, 8, 0, 6, 3, 4, 5]
    np.testing.assert_array_equal(sel.ranks_from_scores(x), want)
    np.testing.assert_array_equal(sel.top_k_by_rank_score(x, 4), [5, 6, 7, 8])   # -inf, the zeros
    np.testing.assert_array_equal(sel.top_k_by_rank_score(x, 8), [0, 1, 2, 4, 5, 6, 7, 8])  # 1st NaN
    c = sel._cpp()
    if c is not None:
        np.testing.assert_array_equal(c.select_ranks(x), want)
        np.testing.assert_array_equal(c.select_topk(x, 4), [5, 6, 7, 8])
        np.testing.assert_array_equal(c.select_topk(x, 8), [0, 1, 2, 4, 5, 6, 7, 8])


def fma_scores(local_rank, global_rank, lam):
    """lam * l + (1 - lam) * g with the first product fused (one rounding), as an FMA would."""
    w = 1.0 - lam
    return np.array([float(Fraction(lam) * int(li) + Fraction(w * float(g)))
                     for li, g in zip(local_rank, global_rank)])


@pytest.mark.parametrize("seed", SEEDS)
def test_cpp_borda_scores_bitwise(core, seed):
    """The scores themselves are numpy's doubles bit for bit (no fused multiply-add)."""
    rng = np.random.default_rng(seed)
    for n in (7, 512, 8192):
        for local in (rng.lognormal(0, 1, n), rng.integers(0, 3, n).astype(np.float64)):
            glob = rng.permutation(n)
            for lam in CPP_LAMS + (0.1, 0.3, 1 / 3, 0.7, 0.9, float(rng.random())):
                ranks = sel.ranks_from_scores(local).astype(np.float64)
                want = lam * ranks + (1.0 - lam) * glob.astype(np.float64)
                got = core.select_borda_scores(local, glob, lam, 1.0 - lam)
                assert np.array_equal(got.view(np.uint64), want.view(np.uint64)), (n, lam)


def test_borda_bitwise_test_would_catch_fma():
    """Guard for the test above: a fused multiply-add really changes some scores at lam = 0.3."""
    rng = np.random.default_rng(0)
    local_rank, glob = rng.permutation(512), rng.permutation(512)
    numpy_scores = 0.3 * local_rank.astype(np.float64) + 0.7 * glob.astype(np.float64)
    assert not np.array_equal(fma_scores(local_rank, glob, 0.3), numpy_scores)


def cpp_calls(monkeypatch, core):
    """Counts select()'s calls into the C++ core (so a silent numpy fallback cannot pass as C++)."""
    calls = []

    class Spy:
        def __getattr__(self, name):
            return getattr(core, name)

        def select_layers(self, *args, **kwargs):
            calls.append(args[0])
            return core.select_layers(*args, **kwargs)

    monkeypatch.setattr(sel, "_CORE", Spy())
    return calls


def model_stats(n_ffs, seed, ties):
    rng = np.random.default_rng(seed)
    if ties:
        act = [rng.integers(0, 4, n).astype(np.float64) for n in n_ffs]
        imp = [rng.integers(0, 4, n).astype(np.float64) for n in n_ffs]
    else:
        act = [rng.lognormal(0, 1, n).astype(np.float32).astype(np.float64) for n in n_ffs]
        imp = [rng.lognormal(0, 1, n) for n in n_ffs]
    prior = SimpleNamespace(act_rank=[rng.permutation(n).astype(np.int32) for n in n_ffs],
                            imp_rank=[rng.permutation(n).astype(np.int32) for n in n_ffs])
    return act, imp, prior


def assert_same_as_numpy(method, d, what, **kw):
    assert_masks_equal(sel.select(method, d, **kw), sel._select_numpy(method, d, **kw), what)


def assert_masks_equal(got, want, what=""):
    assert len(got) == len(want), what
    for il, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None, (what, il)
        else:
            assert g is not None and g.dtype == np.int32 and np.array_equal(g, w), (what, il)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", CPP_N_FF)
def test_cpp_select_equals_numpy(core, monkeypatch, n, seed, ties):
    n_ffs = [n, 0, n, n] if n < 8192 else [n, n]
    act, imp, prior = model_stats(n_ffs, seed, ties)
    rows = [5] * len(n_ffs)
    calls = cpp_calls(monkeypatch, core)
    for method in ("griffin", "global", "a-glass", "i-glass"):
        for lam in (CPP_LAMS if method in ("a-glass", "i-glass") else (0.5,)):
            for d in CPP_DENSITIES:
                kw = dict(n_ff=n_ffs, local_act=act, local_imp=imp, local_rows=rows, prior=prior, lam=lam)
                assert_same_as_numpy(method, d, (method, lam, d), **kw)
    assert len(calls) == 4 * 10 + 2 * 3 * 10   # every call went through C++


@pytest.mark.filterwarnings("ignore:invalid value encountered")   # numpy's inf * 0
@pytest.mark.parametrize("seed", SEEDS)
def test_cpp_select_odd_statistics(core, monkeypatch, seed):
    """NaN / inf / -0.0 statistics select exactly as numpy does."""
    n_ffs = [100, 512, 7]
    rng = np.random.default_rng(seed)
    act = [odd_stats(n, seed + i) for i, n in enumerate(n_ffs)]
    imp = [odd_stats(n, seed + 10 + i) for i, n in enumerate(n_ffs)]
    prior = SimpleNamespace(act_rank=[rng.permutation(n) for n in n_ffs],
                            imp_rank=[odd_stats(n, seed + 20) for n in n_ffs])   # not even ranks
    calls = cpp_calls(monkeypatch, core)
    for method in ("griffin", "global", "a-glass", "i-glass"):
        for lam in (0.0, 0.25, 0.5, 0.7, 1.0, math.nan):
            for d in (0.01, 0.3, 0.5, 1.0):
                kw = dict(n_ff=n_ffs, local_act=act, local_imp=imp, local_rows=[1, 2, 3], prior=prior,
                          lam=lam)
                assert_same_as_numpy(method, d, (method, lam, d), **kw)
    assert calls


def test_cpp_select_zero_rows_and_missing_prior(core, monkeypatch):
    n_ffs = [64, 0, 96, 33]
    act, imp, prior = model_stats(n_ffs, 7, ties=True)
    calls = cpp_calls(monkeypatch, core)
    for rows in ([0, 0, 0, 0], [3, 0, 0, 2], None):
        for p in (prior, None):
            for method in ("griffin", "a-glass", "i-glass"):
                kw = dict(n_ff=n_ffs, local_act=act, local_imp=imp, local_rows=rows, prior=p, lam=0.25)
                got = sel.select(method, 0.4, **kw)
                assert_masks_equal(got, sel._select_numpy(method, 0.4, **kw), (rows, p is None, method))
                assert got[1] is None
    # all-dense models never call C++
    assert sel.select("griffin", 0.4, n_ff=n_ffs, local_act=act, local_imp=imp) == [None] * 4
    assert calls


def test_cpp_tie_break_is_checked(core):
    """Ties must go to the lower index: a higher-index tie-break gives other masks, so the
    equality tests above would catch it."""
    np.testing.assert_array_equal(core.select_topk(np.ones(6), 3), [0, 1, 2])
    np.testing.assert_array_equal(core.select_ranks(np.array([2.0, 5.0, 2.0, 5.0])), [2, 0, 3, 1])
    masks = sel.select("griffin", 0.5, n_ff=[4], local_act=[np.array([1.0, 3.0, 1.0, 3.0])], local_rows=[1])
    np.testing.assert_array_equal(masks[0], [1, 3])
    masks = sel.select("a-glass", 0.5, n_ff=[4], local_act=[np.arange(4.0)],
                       prior=SimpleNamespace(act_rank=[np.array([0, 1, 2, 3])], imp_rank=[np.arange(4)]),
                       local_rows=[1], lam=0.5)
    np.testing.assert_array_equal(masks[0], [0, 1])   # every score is 1.5
    # random tied data: the opposite tie-break changes the result
    x = np.random.default_rng(0).integers(0, 4, 512).astype(np.float64)
    wrong = np.sort(np.lexsort((-np.arange(x.size), -x))[:100]).astype(np.int32)
    got = sel.select("griffin", 100 / 512, n_ff=[512], local_act=[x], local_rows=[1])[0]
    assert np.array_equal(got, sel.top_k_by_rank_score(sel.ranks_from_scores(x), 100))
    assert not np.array_equal(got, wrong)


def test_cpp_lambda_types(core, monkeypatch):
    """lam as numpy computes with it: a float32 lam (1 - lam in float32), an int; long double -> numpy."""
    n_ffs = [300, 300]
    act, imp, prior = model_stats(n_ffs, 3, ties=False)
    calls = cpp_calls(monkeypatch, core)
    for lam in (np.float32(0.3), np.float64(0.3), 1, 0, np.float16(0.7), np.longdouble(0.3)):
        kw = dict(n_ff=n_ffs, local_act=act, local_imp=imp, local_rows=[4, 4], prior=prior, lam=lam)
        for method in ("a-glass", "i-glass"):
            assert_same_as_numpy(method, 0.3, (lam, method), **kw)
    assert len(calls) == 2 * 5   # long double went to numpy


def test_cpp_select_misshapen_inputs_fall_back(core):
    """Statistics of the wrong length are numpy's business: same result, or the same error."""
    act = [np.arange(11.0)]                 # one more than n_ff
    want = sel._select_numpy("griffin", 0.5, n_ff=[10], local_act=act, local_rows=[1])
    assert_masks_equal(sel.select("griffin", 0.5, n_ff=[10], local_act=act, local_rows=[1]), want)
    prior = SimpleNamespace(act_rank=[np.arange(10)], imp_rank=[np.arange(10)])
    for fn in (sel.select, sel._select_numpy):
        with pytest.raises(ValueError):
            fn("a-glass", 0.5, n_ff=[10], local_act=act, local_rows=[1], prior=prior)
    with pytest.raises(ValueError):
        core.select_layers([core.SELECT_BORDA], [np.ones(3)], [np.ones(4)], [1], 0.5, 0.5)
    with pytest.raises(ValueError):
        core.select_layers([7], [np.ones(3)], [np.ones(3)], [1], 0.5, 0.5)


def test_cpp_threads_do_not_change_results(core):
    n_ffs = [8192] * 16
    act, imp, prior = model_stats(n_ffs, 1, ties=True)
    glob = [r.astype(np.float64) for r in prior.act_rank]
    ks = [sel.n_keep(0.4, n) for n in n_ffs]
    kinds = [core.SELECT_BORDA] * 8 + [core.SELECT_TOPK_DESC] * 4 + [core.SELECT_TOPK_ASC] * 4
    runs = [core.select_layers(kinds, act, glob, ks, 0.25, 0.75, n_threads=t) for t in (1, 2, 3)]
    for run in runs[1:]:
        assert_masks_equal(run, runs[0])
    assert_masks_equal(runs[0][:1], [sel.aggregate(sel.ranks_from_scores(act[0]), glob[0], 0.25, ks[0])])


def test_random_and_fallback_stay_numpy(monkeypatch):
    """random never goes through C++ (its rng stream is numpy's); without _core select() is numpy."""
    m1 = sel.select("random", 0.3, n_ff=[100, 0, 50], seed=3)
    assert_masks_equal(m1, sel._select_numpy("random", 0.3, n_ff=[100, 0, 50], seed=3))
    monkeypatch.setattr(sel, "_CORE", False)
    assert sel._cpp() is None
    act, imp, prior = model_stats([64, 64], 2, ties=True)
    kw = dict(n_ff=[64, 64], local_act=act, local_imp=imp, local_rows=[1, 1], prior=prior, lam=0.5)
    assert_masks_equal(sel.select("a-glass", 0.4, **kw), sel._select_numpy("a-glass", 0.4, **kw))
