// stats: every compiled SIMD path against the scalar reference, and the reference against the
// same formulas in double.
//
// Tolerances:
//   token norms  inv = 1/sqrt(sum) summed in double on every path, only the order differs
//                (~1e-13 relative), then rounded to float: at most an ulp or two apart,
//                |path - ref| <= 2^-22 |ref|.
//   sums         per token every path adds the same float term (a = h*ia, i = (h*c)*ii, the
//                same float products) and differs only in the rounding of a*a + acc (FMA or not):
//                |path - ref| <= 4 u (n_tok + 1) (acc0 + sum of terms), u = 2^-24. All terms are
//                positive, so this is a relative bound of ~4e-6 per 16 tokens; a lost or doubled
//                term, or a wrong neuron's value, is off by a whole term.
#include <cmath>
#include <limits>

#include "kernels/stats.h"
#include "test_util.h"

namespace ktest {
namespace {

struct stats_case {
    int64_t n_tok, n_ff, stride;  // h is [n_tok][stride], neurons [0, n_ff)
    int64_t t0, j0, j1;           // tokens [t0, n_tok), neurons [j0, j1) accumulated
    std::vector<float> h, col_norm;
};

stats_case make_case(int64_t n_tok, int64_t n_ff, int64_t pad, bool split, rng & r) {
    stats_case c;
    c.n_tok = n_tok;
    c.n_ff = n_ff;
    c.stride = n_ff + pad;
    c.t0 = (split && n_tok > 1) ? 1 : 0;  // like the skipped BOS row
    c.j0 = (split && n_ff > 3) ? n_ff / 3 : 0;
    c.j1 = (split && n_ff > 3) ? n_ff - 1 : n_ff;
    c.h.assign(n_tok * c.stride, std::numeric_limits<float>::quiet_NaN());  // padding is never read
    std::vector<double> scale(n_ff);
    for (auto & s : scale) {
        s = r.below(8) == 0 ? 0.0 : std::exp(r.normal());  // some dead neurons
    }
    for (int64_t t = 0; t < n_tok; ++t) {
        for (int64_t j = 0; j < n_ff; ++j) {
            c.h[t * c.stride + j] = (float) (r.normal() * scale[j]);
        }
    }
    if (n_tok >= 3) {
        std::fill_n(c.h.begin() + (n_tok / 2) * c.stride, n_ff, 0.0f);  // an all-zero token
    }
    c.col_norm.resize(n_ff);
    for (auto & v : c.col_norm) {
        v = r.below(10) == 0 ? 0.0f : (float) std::exp(0.5 * r.normal());
    }
    if (n_tok >= 2 && n_ff >= 8) {
        // the last token is active only on neurons whose column norm is 0: its impact norm is 0
        float * hl = c.h.data() + (n_tok - 1) * c.stride;
        for (int64_t j = 0; j < n_ff; ++j) {
            hl[j] = j < 4 ? 1.0f + j : 0.0f;
            if (j < 4) {
                c.col_norm[j] = 0.0f;
            }
        }
    }
    return c;
}

const float SENTINEL = -7.25f;

struct norms_out {
    std::vector<float> inv_act, inv_imp;
};

norms_out run_norms(const glass::stats_fns & f, const stats_case & c, const std::string & what) {
    norms_out o{std::vector<float>(c.n_tok, SENTINEL), std::vector<float>(c.n_tok, SENTINEL)};
    f.token_norms(c.h.data(), c.n_ff, c.stride, c.t0, c.n_tok, c.col_norm.data(), o.inv_act.data(), o.inv_imp.data());
    bool kept = true;
    for (int64_t t = 0; t < c.t0; ++t) {
        kept = kept && o.inv_act[t] == SENTINEL && o.inv_imp[t] == SENTINEL;
    }
    expect(kept, what + ": token norms written outside [t0, t1)");
    return o;
}

struct sums_out {
    std::vector<float> act, imp;
};

// acc0: the sums' starting values (the kernel adds to them).
sums_out run_sums(const glass::stats_fns & f, const stats_case & c, const norms_out & n, const std::vector<float> & acc0,
                  const std::string & what) {
    sums_out o{acc0, acc0};
    f.accumulate(c.h.data(), c.stride, c.t0, c.n_tok, c.col_norm.data(), n.inv_act.data(), n.inv_imp.data(), c.j0,
                 c.j1, o.act.data(), o.imp.data());
    bool kept = true;
    for (int64_t j = 0; j < c.n_ff; ++j) {
        if (j < c.j0 || j >= c.j1) {
            kept = kept && o.act[j] == acc0[j] && o.imp[j] == acc0[j];
        }
    }
    expect(kept, what + ": sums written outside [j0, j1)");
    return o;
}

// The formulas in double: the inverse norms, and the sums given the kernel's float inverse norms.
void norms_double(const stats_case & c, std::vector<double> & ia, std::vector<double> & ii) {
    ia.assign(c.n_tok, 0.0);
    ii.assign(c.n_tok, 0.0);
    for (int64_t t = c.t0; t < c.n_tok; ++t) {
        double sa = 0.0, si = 0.0;
        for (int64_t j = 0; j < c.n_ff; ++j) {
            const double v = c.h[t * c.stride + j], vc = v * c.col_norm[j];
            sa += v * v;
            si += vc * vc;
        }
        ia[t] = sa > 0 ? 1.0 / std::sqrt(sa) : 0.0;
        ii[t] = si > 0 ? 1.0 / std::sqrt(si) : 0.0;
    }
}

void sums_double(const stats_case & c, const norms_out & n, const std::vector<float> & acc0, std::vector<double> & act,
                 std::vector<double> & imp, std::vector<double> & tol_act, std::vector<double> & tol_imp) {
    act.assign(acc0.begin(), acc0.end());
    imp.assign(acc0.begin(), acc0.end());
    for (int64_t t = c.t0; t < c.n_tok; ++t) {
        for (int64_t j = c.j0; j < c.j1; ++j) {
            const double v = c.h[t * c.stride + j];
            const double a = v * n.inv_act[t], i = v * c.col_norm[j] * n.inv_imp[t];
            act[j] += a * a;
            imp[j] += i * i;
        }
    }
    const double k = 4 * U32 * (c.n_tok + 1);
    tol_act.resize(c.n_ff);
    tol_imp.resize(c.n_ff);
    for (int64_t j = 0; j < c.n_ff; ++j) {
        tol_act[j] = k * act[j] + std::numeric_limits<float>::denorm_min();
        tol_imp[j] = k * imp[j] + std::numeric_limits<float>::denorm_min();
    }
}

std::vector<double> rel_tol(const std::vector<float> & ref, double rtol) {
    std::vector<double> t(ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
        t[i] = rtol * std::fabs(ref[i]) + std::numeric_limits<float>::denorm_min();
    }
    return t;
}

void test_case(const stats_case & c, rng & r) {
    const auto & paths = glass::stats_paths();
    const std::string what = fmt("stats n_tok=%lld n_ff=%lld stride=%lld t0=%lld j=[%lld,%lld)", (long long) c.n_tok,
                                 (long long) c.n_ff, (long long) c.stride, (long long) c.t0, (long long) c.j0,
                                 (long long) c.j1);
    const double NORM_RTOL = 4 * U32;
    std::vector<float> acc0(c.n_ff);
    for (auto & v : acc0) {
        v = (float) (r.uniform() * 3.0);  // earlier ubatches' sums
    }

    // the reference against double
    const norms_out n_ref = run_norms(paths[0].fns, c, what + " scalar");
    std::vector<double> ia, ii;
    norms_double(c, ia, ii);
    std::vector<double> ia_ref = as_double(n_ref.inv_act.data(), c.n_tok), ii_ref = as_double(n_ref.inv_imp.data(), c.n_tok);
    for (int64_t t = 0; t < c.t0; ++t) {  // untouched tokens: compare the sentinels with themselves
        ia[t] = ia_ref[t];
        ii[t] = ii_ref[t];
    }
    expect_within(what + " scalar 1/||h|| vs double", "stats/scalar", ia_ref, ia, rel_tol(n_ref.inv_act, NORM_RTOL));
    expect_within(what + " scalar 1/||h c|| vs double", "stats/scalar", ii_ref, ii, rel_tol(n_ref.inv_imp, NORM_RTOL));
    const sums_out s_ref = run_sums(paths[0].fns, c, n_ref, acc0, what + " scalar");
    std::vector<double> act, imp, tol_act, tol_imp;
    sums_double(c, n_ref, acc0, act, imp, tol_act, tol_imp);
    expect_within(what + " scalar act vs double", "stats/scalar", as_double(s_ref.act.data(), c.n_ff), act, tol_act);
    expect_within(what + " scalar imp vs double", "stats/scalar", as_double(s_ref.imp.data(), c.n_ff), imp, tol_imp);

    // every SIMD path against the reference (the sums from the reference's norms, so each
    // function is judged on its own)
    for (size_t p = 1; p < paths.size(); ++p) {
        if (!paths[p].runs_here) {
            continue;
        }
        const std::string pw = what + " " + paths[p].name, rec = std::string("stats/") + paths[p].name;
        const norms_out n = run_norms(paths[p].fns, c, pw);
        expect_within(pw + " 1/||h|| vs scalar", rec, as_double(n.inv_act.data(), c.n_tok), ia_ref,
                      rel_tol(n_ref.inv_act, NORM_RTOL));
        expect_within(pw + " 1/||h c|| vs scalar", rec, as_double(n.inv_imp.data(), c.n_tok), ii_ref,
                      rel_tol(n_ref.inv_imp, NORM_RTOL));
        const sums_out s = run_sums(paths[p].fns, c, n_ref, acc0, pw);
        expect_within(pw + " act vs scalar", rec, as_double(s.act.data(), c.n_ff), as_double(s_ref.act.data(), c.n_ff),
                      tol_act);
        expect_within(pw + " imp vs scalar", rec, as_double(s.imp.data(), c.n_ff), as_double(s_ref.imp.data(), c.n_ff),
                      tol_imp);
    }
}

// The comparison notices one token left out of the sums.
void test_checker_catches_a_dropped_token(rng & r) {
    stats_case c = make_case(6, 40, 0, false, r);
    const auto & ref = glass::stats_paths()[0].fns;
    const norms_out n = run_norms(ref, c, "dropped token");
    const std::vector<float> acc0(c.n_ff, 0.0f);
    std::vector<double> act, imp, tol_act, tol_imp;
    sums_double(c, n, acc0, act, imp, tol_act, tol_imp);
    c.t0 = 1;
    const sums_out s = run_sums(ref, c, n, acc0, "dropped token");
    expect(compare(as_double(s.act.data(), c.n_ff), act, tol_act).ratio > 1.0,
           "stats checker: a dropped token went unnoticed");
}

}  // namespace

void test_stats() {
    rng r(777);
    const auto & paths = glass::stats_paths();
    expect(std::string(paths[0].name) == "scalar", "stats_paths()[0] is not the scalar reference");
    // (n_tok, n_ff, row padding): odd sizes around the 4- and 8-wide vectors, a big odd row
    const int64_t shapes[][3] = {{1, 1, 0}, {1, 3, 0}, {2, 4, 0}, {3, 7, 1}, {5, 8, 0}, {4, 33, 3},
                                 {6, 300, 0}, {17, 64, 0}, {3, 2053, 11}};
    for (const auto & s : shapes) {
        for (bool split : {false, true}) {
            test_case(make_case(s[0], s[1], s[2], split, r), r);
        }
    }
    test_checker_catches_a_dropped_token(r);
}

}  // namespace ktest
