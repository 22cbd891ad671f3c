// down_axpy: every compiled SIMD path against the scalar reference, and the reference against
// the same sum in double.
//
// Tolerance, per output value o: every path adds the same terms t_i = (h_j d_jb) q_jo in the same
// (idx) order and differs from the reference only in how each addition rounds (FMA or mul+add),
// at most 3 roundings of size u = 2^-24 per term, each relative to |y0| + sum|t_i|:
//     |path - ref| <= 4 u (k + 1) (|y0_o| + sum_i |t_i|)
// A dropped, doubled or misplaced term, a lost sign or a wrong lane costs ~|t_i|, far above that
// for the shapes here (k <= 300: the bound is ~7e-5 of the magnitude sum, one term ~1/k of it).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/down_axpy.h"
#include "test_util.h"

namespace ktest {
namespace {

using glass::NM_BLOCK;

struct nm_data {
    std::vector<int8_t> q;
    std::vector<float> d;
    int64_t n_rows = 0, n_blk = 0;
    glass::nm_matrix_view view() const { return {q.data(), d.data(), n_rows, n_blk}; }
};

// Random int8 rows over the whole range (-128 included: sign extension), scales spread over
// two orders of magnitude, a few zero blocks (an all-zero block of the real layout has d = 0).
nm_data random_nm(int64_t n_rows, int64_t n_blk, rng & r) {
    nm_data m;
    m.n_rows = n_rows;
    m.n_blk = n_blk;
    m.q.resize(n_rows * n_blk * NM_BLOCK);
    m.d.resize(n_rows * n_blk);
    for (auto & v : m.q) {
        v = (int8_t) (r.below(256) - 128);
    }
    for (auto & v : m.d) {
        v = r.below(10) == 0 ? 0.0f : (float) (1e-2 * std::exp(r.normal()));
    }
    return m;
}

struct expected {
    std::vector<double> y;    // y0 + sum of terms, in double
    std::vector<double> tol;  // the bound above
};

expected exact_sum(const nm_data & m, const std::vector<int32_t> & idx, const std::vector<float> & h,
                   const std::vector<float> & y0, int64_t blk0, int64_t blk1) {
    expected e;
    e.y.assign(y0.begin(), y0.end());
    std::vector<double> mag(y0.size());
    for (size_t o = 0; o < y0.size(); ++o) {
        mag[o] = std::fabs(y0[o]);
    }
    for (int32_t j : idx) {
        if (h[j] == 0.0f) {
            continue;
        }
        for (int64_t b = blk0; b < blk1; ++b) {
            const float sd = h[j] * m.d[j * m.n_blk + b];  // the kernels' own float product
            for (int t = 0; t < NM_BLOCK; ++t) {
                const size_t o = (b - blk0) * NM_BLOCK + t;
                const double term = (double) sd * m.q[(j * m.n_blk + b) * NM_BLOCK + t];
                e.y[o] += term;
                mag[o] += std::fabs(term);
            }
        }
    }
    e.tol.resize(y0.size());
    for (size_t o = 0; o < y0.size(); ++o) {
        e.tol[o] = 4 * U32 * (idx.size() + 1) * mag[o] + std::numeric_limits<float>::denorm_min();
    }
    return e;
}

// Runs `fn` on a copy of y0 with guard values on both sides; checks the guards survived.
std::vector<double> run_path(glass::down_axpy_fn fn, const nm_data & m, const std::vector<int32_t> & idx,
                             const std::vector<float> & h, const std::vector<float> & y0, int64_t blk0,
                             int64_t blk1, const std::string & what) {
    const float guard = -1234.5f;
    std::vector<float> buf(y0.size() + 2 * NM_BLOCK, guard);
    std::copy(y0.begin(), y0.end(), buf.begin() + NM_BLOCK);
    fn(m.view(), idx.data(), (int64_t) idx.size(), h.data(), buf.data() + NM_BLOCK, blk0, blk1);
    bool guards_ok = true;
    for (int g = 0; g < NM_BLOCK; ++g) {
        guards_ok = guards_ok && buf[g] == guard && buf[buf.size() - 1 - g] == guard;
    }
    expect(guards_ok, what + ": wrote outside its output blocks");
    return as_double(buf.data() + NM_BLOCK, y0.size());
}

// Neuron selections: empty, first, last, all, a sorted random ~40%, the same reversed.
std::vector<std::pair<std::string, std::vector<int32_t>>> selections(int64_t n_rows, rng & r) {
    std::vector<int32_t> all(n_rows), part;
    std::iota(all.begin(), all.end(), 0);
    for (int32_t j = 0; j < n_rows; ++j) {
        if (r.uniform() < 0.4) {
            part.push_back(j);
        }
    }
    std::vector<int32_t> reversed(part.rbegin(), part.rend());
    return {{"empty", {}}, {"first", {0}}, {"last", {(int32_t) n_rows - 1}}, {"all", all},
            {"random", part}, {"reversed", reversed}};
}

void test_case(int64_t n_rows, int64_t n_blk, rng & r) {
    const nm_data m = random_nm(n_rows, n_blk, r);
    const auto & paths = glass::down_axpy_paths();
    // output block ranges: everything, without the first, one block in the middle
    std::vector<std::pair<int64_t, int64_t>> ranges = {{0, n_blk}};
    if (n_blk > 1) {
        ranges.push_back({1, n_blk});
        ranges.push_back({n_blk / 2, n_blk / 2 + 1});
    }
    for (const auto & [sel_name, idx] : selections(n_rows, r)) {
        // activations: unselected neurons are NaN (reading one poisons the output), and some
        // selected ones are 0 (their rows must be skipped, a NaN in them would not matter then)
        std::vector<float> h(n_rows, std::numeric_limits<float>::quiet_NaN());
        for (int32_t j : idx) {
            h[j] = r.below(5) == 0 ? 0.0f : (float) r.normal();
        }
        for (const auto & [blk0, blk1] : ranges) {
            std::vector<float> y0((blk1 - blk0) * NM_BLOCK);
            for (auto & v : y0) {
                v = (float) r.normal();
            }
            const std::string what = fmt("down_axpy n_rows=%lld n_blk=%lld %s k=%zu blocks [%lld,%lld)",
                                         (long long) n_rows, (long long) n_blk, sel_name.c_str(), idx.size(),
                                         (long long) blk0, (long long) blk1);
            const expected e = exact_sum(m, idx, h, y0, blk0, blk1);
            const auto y_ref = run_path(paths[0].fns, m, idx, h, y0, blk0, blk1, what + " scalar");
            expect_within(what + " scalar vs double", "down_axpy/scalar", y_ref, e.y, e.tol);
            for (size_t p = 1; p < paths.size(); ++p) {
                if (!paths[p].runs_here) {
                    continue;
                }
                const std::string pw = what + " " + paths[p].name;
                const auto y = run_path(paths[p].fns, m, idx, h, y0, blk0, blk1, pw);
                expect_within(pw + " vs scalar", std::string("down_axpy/") + paths[p].name, y, y_ref, e.tol);
            }
            // the public entry point is the best path, bit for bit
            const auto y_pub = run_path(glass::down_axpy, m, idx, h, y0, blk0, blk1, what + " public");
            const auto y_best = run_path(glass::kernel_path_best(paths).fns, m, idx, h, y0, blk0, blk1, what);
            expect(y_pub == y_best, what + ": down_axpy() is not its best path");
        }
    }
}

// The comparison notices one neuron left out (so a path that drops a term cannot pass).
void test_checker_catches_a_dropped_neuron(rng & r) {
    const nm_data m = random_nm(300, 4, r);
    std::vector<int32_t> idx(300);
    std::iota(idx.begin(), idx.end(), 0);
    std::vector<float> h(300);
    for (auto & v : h) {
        v = (float) r.normal();
    }
    const std::vector<float> y0(4 * NM_BLOCK, 0.0f);
    const expected e = exact_sum(m, idx, h, y0, 0, 4);
    std::vector<int32_t> fewer(idx.begin(), idx.end() - 1);
    const auto y = run_path(glass::down_axpy_ref, m, fewer, h, y0, 0, 4, "dropped neuron");
    expect(compare(y, e.y, e.tol).ratio > 1.0, "down_axpy checker: a dropped neuron went unnoticed");
}

}  // namespace

void test_down_axpy() {
    rng r(20240601);
    const auto & paths = glass::down_axpy_paths();
    expect_path_list("down_axpy", paths, glass::down_axpy_ref, glass::down_axpy_path());
    // n_rows (neurons) x n_blk (output blocks of 32): 1 x 1 up to an odd-sized larger one
    const int64_t shapes[][2] = {{1, 1}, {5, 1}, {7, 3}, {33, 2}, {96, 5}, {300, 7}, {64, 20}};
    for (const auto & s : shapes) {
        test_case(s[0], s[1], r);
    }
    test_checker_catches_a_dropped_neuron(r);
}

}  // namespace ktest
