// down_packed: every compiled SIMD path and the scalar reference against the exact sum in double,
// for the four formats the packed layout uses (Q4_0, Q8_0, Q4_K, Q6_K), with the test's own
// packing of the codes (down_packed.h's byte layout) and ggml's own fp16 conversions.
//
// Exact: y0[i] + sum over kept j with h_j != 0 of h_j * W[i][j], W = a (q - zero) - b, a and b the
// float products da * sa and db * sb (exact in float: an fp16 times an int8 needs 19 bits), all
// in double (h a (q - zero) needs 51 bits: each term is exact, the double sum rounds ~2^-29 times
// below the bound here).
//
// Tolerance, per output i. The kernel splits the kept neurons into runs of one sub-scale group
// (k_r neurons with h != 0) and for each run computes in float
//     acc = sum h_j q_j,  H = sum h_j,  y += a (acc - zero H) - b H
// acc and H each carry < k_r roundings relative to M_r = sum |h_j q_j| and S_r = sum |h_j| (zero
// is 0, 8 or 32: zero * H is exact), the subtraction and the two scalings one more each. The
// subtraction cancels: its error is relative to |acc| + |zero H|, not to the (possibly much
// smaller) result, so the bound is in the magnitudes
//     T_r = |a| (M_r + zero S_r) + |b| S_r,
//     run error <= (k_r + 2) u T_r;  the two additions into y <= 2 u Y_r, Y_r = |y0| + sum_{r'<=r} T_r'
//     tol = 1.01 * sum_r ((k_r + 2) u T_r + 2 u Y_r),   u = 2^-24
// (1.01 covers the second-order terms). This bounds every path (FMA or not, each rounding counted
// once): each is checked against the exact sum with tol, and against the scalar reference with
// 2 tol. A dropped neuron costs |h_j W[i][j]| ~ |a| |h| |q - zero|, a code off by 8 costs 8 |a h|:
// both far above tol for these shapes (tol ~ 1e-3 |a| here); the self-checks at the end prove it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <set>

#include "ggml.h"
#include "kernels/down_packed.h"
#include "test_util.h"

namespace ktest {
namespace {

using glass::PK_BLOCK;
using glass::pk_codes;

// One format of the layout (down_packed.h's table).
struct pk_format {
    const char * name;
    pk_codes code;
    int zero, group, super;
    bool has_sa, has_db;
    int sa_lo, sa_hi;  // sub-scale range (sa and sb)
};

const pk_format FORMATS[] = {
    {"Q4_0", pk_codes::u4, 8, 32, 32, false, false, 1, 1},
    {"Q8_0", pk_codes::s8, 0, 32, 32, false, false, 1, 1},
    {"Q4_K", pk_codes::u4, 0, 32, 256, true, true, 0, 63},       // sa = sc, sb = m: 6-bit
    {"Q6_K", pk_codes::u6, 32, 16, 256, true, false, -128, 127},  // sa = the int8 scales
};

int code_lo(pk_codes c) { return c == pk_codes::s8 ? -128 : 0; }
int code_hi(pk_codes c) { return c == pk_codes::u4 ? 15 : c == pk_codes::u6 ? 63 : 127; }

struct pk_data {
    pk_format f;
    int64_t n_ff = 0, n_embd = 0, n_blk = 0;
    std::vector<int> q;  // the codes as drawn, [n_ff][n_embd]
    std::vector<uint8_t> codes;
    std::vector<uint16_t> da, db;
    std::vector<int8_t> sa, sb;
    glass::packed_view view() const {
        return {codes.data(), da.data(), f.has_sa ? sa.data() : nullptr, f.has_db ? db.data() : nullptr,
                f.has_db ? sb.data() : nullptr, f.code, f.zero, f.group, f.super, n_ff, n_embd, n_blk};
    }
    // the float products the kernel forms
    float a(int64_t j, int64_t i) const {
        const float d = ggml_fp16_to_fp32(da[(j / f.super) * n_embd + i]);
        return f.has_sa ? d * (float) sa[(j / f.group) * n_embd + i] : d;
    }
    float b(int64_t j, int64_t i) const {
        return f.has_db ? ggml_fp16_to_fp32(db[(j / f.super) * n_embd + i]) * (float) sb[(j / f.group) * n_embd + i]
                        : 0.0f;
    }
};

// Packs neuron j's codes (the layout of down_packed.h) from d.q.
void pack_row(pk_data & d, int64_t j) {
    const int bb = glass::pk_block_bytes(d.f.code);
    for (int64_t blk = 0; blk < d.n_blk; ++blk) {
        const int * q = &d.q[j * d.n_embd + blk * PK_BLOCK];
        uint8_t * p = &d.codes[(j * d.n_blk + blk) * bb];
        if (d.f.code == pk_codes::s8) {
            for (int t = 0; t < 32; ++t) {
                p[t] = (uint8_t) (int8_t) q[t];
            }
            continue;
        }
        for (int t = 0; t < 16; ++t) {
            p[t] = (uint8_t) ((q[t] & 0xf) | ((q[t + 16] & 0xf) << 4));
        }
        if (d.f.code == pk_codes::u6) {
            for (int t = 0; t < 8; ++t) {
                p[16 + t] = (uint8_t) (((q[t] >> 4) & 3) | (((q[t + 8] >> 4) & 3) << 2) |
                                       (((q[t + 16] >> 4) & 3) << 4) | (((q[t + 24] >> 4) & 3) << 6));
            }
        }
    }
}

// A random fp16 scale: magnitudes spread over two orders, either sign, some zero, some fp16
// subnormals (the conversions must handle them).
uint16_t random_half(rng & r) {
    const int64_t kind = r.below(20);
    const uint16_t sign = r.below(2) ? 0x8000 : 0;
    if (kind == 0) {
        return sign;  // +-0: an all-zero block
    }
    if (kind == 1) {
        return (uint16_t) (sign | (1 + r.below(0x3ff)));  // subnormal
    }
    return (uint16_t) (sign | ggml_fp32_to_fp16((float) (1e-2 * std::exp(r.normal()))));
}

pk_data random_packed(const pk_format & f, int64_t n_ff, int64_t n_embd, rng & r) {
    pk_data d;
    d.f = f;
    d.n_ff = n_ff;
    d.n_embd = n_embd;
    d.n_blk = n_embd / PK_BLOCK;
    d.q.resize(n_ff * n_embd);
    const int lo = code_lo(f.code), hi = code_hi(f.code);
    for (auto & v : d.q) {
        v = lo + (int) r.below(hi - lo + 1);  // every value of the range: all nibbles, -128
    }
    d.codes.assign(n_ff * d.n_blk * glass::pk_block_bytes(f.code), 0);
    for (int64_t j = 0; j < n_ff; ++j) {
        pack_row(d, j);
    }
    d.da.resize(n_ff / f.super * n_embd);
    for (auto & v : d.da) {
        v = random_half(r);
    }
    if (f.has_sa) {
        d.sa.resize(n_ff / f.group * n_embd);
        for (auto & v : d.sa) {
            v = (int8_t) (f.sa_lo + r.below(f.sa_hi - f.sa_lo + 1));
        }
    }
    if (f.has_db) {
        d.db.resize(d.da.size());
        for (auto & v : d.db) {
            v = random_half(r);
        }
        d.sb.resize(n_ff / f.group * n_embd);
        for (auto & v : d.sb) {
            v = (int8_t) (f.sa_lo + r.below(f.sa_hi - f.sa_lo + 1));
        }
    }
    return d;
}

struct expected {
    std::vector<double> y;    // y0 + sum of h_j W[i][j], in double
    std::vector<double> tol;  // the bound above
};

expected exact_sum(const pk_data & d, const std::vector<int32_t> & idx, const std::vector<float> & h,
                   const std::vector<float> & y0, int64_t blk0, int64_t blk1) {
    const int64_t i0 = blk0 * PK_BLOCK, n = (blk1 - blk0) * PK_BLOCK;
    expected e;
    e.y.assign(y0.begin(), y0.end());
    e.tol.assign(n, 0.0);
    std::vector<double> running(n);  // Y_r
    for (int64_t o = 0; o < n; ++o) {
        running[o] = std::fabs(y0[o]);
    }
    std::vector<double> M(n), S(n);
    size_t p = 0;
    while (p < idx.size()) {  // runs of one group, as the kernel forms them
        const int64_t g = idx[p] / d.f.group;
        size_t end = p;
        while (end < idx.size() && idx[end] / d.f.group == g) {
            ++end;
        }
        int64_t k_r = 0;
        std::fill(M.begin(), M.end(), 0.0);
        std::fill(S.begin(), S.end(), 0.0);
        for (size_t m = p; m < end; ++m) {
            const int32_t j = idx[m];
            if (h[j] == 0.0f) {
                continue;
            }
            ++k_r;
            for (int64_t o = 0; o < n; ++o) {
                const int q = d.q[j * d.n_embd + i0 + o];
                e.y[o] += (double) h[j] * ((double) d.a(j, i0 + o) * (q - d.f.zero)) - (double) h[j] * d.b(j, i0 + o);
                M[o] += std::fabs((double) h[j] * q);
                S[o] += std::fabs((double) h[j]);
            }
        }
        if (k_r > 0) {
            const int32_t j = idx[p];  // any neuron of the group: same a, b
            for (int64_t o = 0; o < n; ++o) {
                const double T = std::fabs(d.a(j, i0 + o)) * (M[o] + d.f.zero * S[o]) + std::fabs(d.b(j, i0 + o)) * S[o];
                running[o] += T;
                e.tol[o] += (k_r + 2) * U32 * T + 2 * U32 * running[o];
            }
        }
        p = end;
    }
    for (auto & t : e.tol) {
        t = 1.01 * t + std::numeric_limits<float>::denorm_min();
    }
    return e;
}

// Runs `fn` on a copy of y0 with guard values on both sides of y and of the acc scratch (whose
// inside starts as NaN: a path must overwrite it, not add to it, at a group's first neuron).
std::vector<double> run_path(glass::down_packed_fn fn, const pk_data & d, const std::vector<int32_t> & idx,
                             const std::vector<float> & h, const std::vector<float> & y0, int64_t blk0,
                             int64_t blk1, const std::string & what) {
    const float guard = -1234.5f;
    const size_t n = y0.size();
    std::vector<float> buf(n + 2 * PK_BLOCK, guard), acc(n + 2 * PK_BLOCK, guard);
    std::copy(y0.begin(), y0.end(), buf.begin() + PK_BLOCK);
    std::fill(acc.begin() + PK_BLOCK, acc.end() - PK_BLOCK, std::numeric_limits<float>::quiet_NaN());
    fn(d.view(), idx.data(), (int64_t) idx.size(), h.data(), buf.data() + PK_BLOCK, blk0, blk1, acc.data() + PK_BLOCK);
    bool y_ok = true, acc_ok = true;
    for (int g = 0; g < PK_BLOCK; ++g) {
        y_ok = y_ok && buf[g] == guard && buf[buf.size() - 1 - g] == guard;
        acc_ok = acc_ok && acc[g] == guard && acc[acc.size() - 1 - g] == guard;
    }
    expect(y_ok, what + ": wrote outside its output blocks");
    expect(acc_ok, what + ": wrote outside its acc scratch");
    return as_double(buf.data() + PK_BLOCK, n);
}

using selection = std::pair<std::string, std::vector<int32_t>>;

// Neuron selections (ascending): empty, first, last, all, whole groups (first, middle, last),
// one neuron per group, 4 neurons across every group boundary, a random ~40%, a random ~5%.
std::vector<selection> selections(int64_t n_ff, int G, rng & r) {
    const int64_t n_groups = n_ff / G;
    std::vector<int32_t> all(n_ff), whole, one, across, part, few;
    std::iota(all.begin(), all.end(), 0);
    for (int64_t g : std::set<int64_t>{0, n_groups / 2, n_groups - 1}) {
        for (int t = 0; t < G; ++t) {
            whole.push_back((int32_t) (g * G + t));
        }
    }
    for (int64_t g = 0; g < n_groups; ++g) {
        one.push_back((int32_t) (g * G + r.below(G)));
    }
    for (int64_t g = 1; g < n_groups; ++g) {
        for (int t = -2; t < 2; ++t) {
            across.push_back((int32_t) (g * G + t));
        }
    }
    for (int32_t j = 0; j < n_ff; ++j) {
        const double u = r.uniform();
        if (u < 0.4) {
            part.push_back(j);
        }
        if (u < 0.05) {
            few.push_back(j);
        }
    }
    std::vector<selection> s = {{"empty", {}}, {"first", {0}}, {"last", {(int32_t) n_ff - 1}}, {"all", all},
                                {"whole groups", whole}, {"one per group", one}, {"random 40%", part},
                                {"random 5%", few}};
    if (!across.empty()) {
        s.push_back({"across group boundaries", across});
    }
    return s;
}

void test_case(const pk_format & f, int64_t n_ff, int64_t n_embd, rng & r) {
    const pk_data d = random_packed(f, n_ff, n_embd, r);
    const int64_t n_blk = d.n_blk;
    const auto & paths = glass::down_packed_paths();
    std::vector<std::pair<int64_t, int64_t>> ranges = {{0, n_blk}};
    if (n_blk > 1) {
        ranges.push_back({1, n_blk});
    }
    if (n_blk > 2) {
        ranges.push_back({n_blk / 2, n_blk / 2 + 1});
    }
    auto sels = selections(n_ff, f.group, r);
    // all neurons, the first of every group with h = 0: the next one must start the group's acc
    sels.push_back({"all, group firsts zero", sels[3].second});
    for (size_t si = 0; si < sels.size(); ++si) {
        const auto & [sel_name, idx] = sels[si];
        // activations: unselected neurons are NaN (reading one poisons the output), and some
        // selected ones are 0 (their codes must be skipped)
        std::vector<float> h(n_ff, std::numeric_limits<float>::quiet_NaN());
        for (int32_t j : idx) {
            h[j] = r.below(5) == 0 ? 0.0f : (float) r.normal();
        }
        if (si + 1 == sels.size()) {
            for (int64_t j = 0; j < n_ff; j += f.group) {
                h[j] = 0.0f;
            }
        }
        for (const auto & [blk0, blk1] : ranges) {
            std::vector<float> y0((blk1 - blk0) * PK_BLOCK);
            for (auto & v : y0) {
                v = (float) r.normal();
            }
            const std::string what = fmt("down_packed %s n_ff=%lld n_embd=%lld %s k=%zu blocks [%lld,%lld)", f.name,
                                         (long long) n_ff, (long long) n_embd, sel_name.c_str(), idx.size(),
                                         (long long) blk0, (long long) blk1);
            const expected e = exact_sum(d, idx, h, y0, blk0, blk1);
            std::vector<double> tol2(e.tol);
            for (auto & t : tol2) {
                t *= 2;
            }
            const auto y_ref = run_path(paths[0].fns, d, idx, h, y0, blk0, blk1, what + " scalar");
            expect_within(what + " scalar vs double", "down_packed/scalar", y_ref, e.y, e.tol);
            for (size_t p = 1; p < paths.size(); ++p) {
                if (!paths[p].runs_here) {
                    continue;
                }
                const std::string pw = what + " " + paths[p].name;
                const auto y = run_path(paths[p].fns, d, idx, h, y0, blk0, blk1, pw);
                expect_within(pw + " vs double", std::string("down_packed/") + paths[p].name, y, e.y, e.tol);
                expect_within(pw + " vs scalar", "", y, y_ref, tol2);
            }
            // the public entry point is the best path, bit for bit
            const auto y_pub = run_path(glass::down_packed_axpy, d, idx, h, y0, blk0, blk1, what + " public");
            const auto y_best = run_path(glass::kernel_path_best(paths).fns, d, idx, h, y0, blk0, blk1, what);
            expect(y_pub == y_best, what + ": down_packed_axpy() is not its best path");
        }
    }
}

// pk_half_to_float (the reference's fp16 conversion) against ggml's, on all 65536 values.
void test_half_to_float() {
    int64_t bad = 0;
    uint32_t first_bad = 0;
    for (uint32_t v = 0; v < 65536; ++v) {
        const float a = glass::pk_half_to_float((uint16_t) v), b = ggml_fp16_to_fp32((ggml_fp16_t) v);
        uint32_t ba, bb;
        std::memcpy(&ba, &a, 4);
        std::memcpy(&bb, &b, 4);
        if (!(std::isnan(a) ? std::isnan(b) : ba == bb)) {
            first_bad = bad++ ? first_bad : v;
        }
    }
    expect(bad == 0, fmt("pk_half_to_float differs from ggml_fp16_to_fp32 on %lld values (first 0x%04x)",
                         (long long) bad, first_bad));
}

// The comparison notices one neuron left out, and one code off by 8 (bit 3 of one output's code
// flipped in the packed bytes), in every format and on every path: a path that drops a term or
// decodes a code wrong cannot pass.
void test_checker_catches_errors(rng & r) {
    const auto & paths = glass::down_packed_paths();
    for (const pk_format & f : FORMATS) {
        const int64_t n_ff = 256, n_embd = 64;
        pk_data d = random_packed(f, n_ff, n_embd, r);
        std::vector<int32_t> idx(n_ff);
        std::iota(idx.begin(), idx.end(), 0);
        std::vector<float> h(n_ff);
        for (auto & v : h) {
            v = (float) r.normal();
        }
        const std::vector<float> y0(n_embd, 0.0f);
        h[100] = 1.0f;
        const expected e = exact_sum(d, idx, h, y0, 0, d.n_blk);

        std::vector<int32_t> fewer(idx);
        fewer.erase(fewer.begin() + 100);
        const auto y_drop = run_path(glass::down_packed_axpy_ref, d, fewer, h, y0, 0, d.n_blk, "dropped neuron");
        expect(compare(y_drop, e.y, e.tol).ratio > 1.0,
               fmt("down_packed checker (%s): a dropped neuron went unnoticed", f.name));

        // neuron 77, output t of block 1 (byte t holds it for every code type; t < 16: the low
        // nibble for u4 / u6), the t with the largest |a|
        const int64_t j = 77;
        int t = 0;
        for (int c = 1; c < 16; ++c) {
            t = std::fabs(d.a(j, PK_BLOCK + c)) > std::fabs(d.a(j, PK_BLOCK + t)) ? c : t;
        }
        h[j] = 1.0f;
        const expected e1 = exact_sum(d, idx, h, y0, 0, d.n_blk);
        d.codes[(j * d.n_blk + 1) * glass::pk_block_bytes(f.code) + t] ^= 0x08;
        for (const auto & p : paths) {
            if (!p.runs_here) {
                continue;
            }
            const auto y = run_path(p.fns, d, idx, h, y0, 0, d.n_blk, "flipped code");
            const compare_result c = compare(y, e1.y, e1.tol);
            expect(c.ratio > 1.0 && c.worst_i == (size_t) (PK_BLOCK + t),
                   fmt("down_packed checker (%s, %s): a code off by 8 went unnoticed (worst %.3g x at %zu)", f.name,
                       p.name, c.ratio, c.worst_i));
        }
    }
}

}  // namespace

void test_down_packed() {
    rng r(20240917);
    const auto & paths = glass::down_packed_paths();
    expect_path_list("down_packed", paths, glass::down_packed_axpy_ref, glass::down_packed_path());
    test_half_to_float();
    // n_ff (neurons: several groups, whole super-blocks) x n_embd (a multiple of 32)
    const int64_t shapes_s32[][2] = {{32, 32}, {96, 64}, {160, 96}, {64, 256}};
    const int64_t shapes_s256[][2] = {{256, 32}, {256, 96}, {512, 64}, {512, 256}};
    for (const pk_format & f : FORMATS) {
        for (const auto & s : f.super == 32 ? shapes_s32 : shapes_s256) {
            test_case(f, s[0], s[1], r);
        }
    }
    test_checker_catches_errors(r);
}

}  // namespace ktest
