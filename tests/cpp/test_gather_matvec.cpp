// gather_matvec (ggml's per-type CPU dot products over selected rows) against double references
// built from ggml's own dequantization, for every weight type ggml has a CPU dot product for.
//
// gather_matvec has no SIMD of its own: the SIMD is ggml's vec_dot for the CPU ggml was built for
// (NEON, dotprod, fp16 on ARM; AVX2/AVX-512 on x86). What is checked here is that glass calls it
// right (row strides, x conversion, selected rows only) on every type and odd size.
//
// out[r] = vec_dot(W row r, xq), xq = x converted to the type's "vec_dot type" (F32, F16, BF16,
// Q8_0, Q8_1 or Q8_K). With W = to_float(weights) and x^ = xq decoded back to floats:
//   tight  |out - sum W x^| <= tol_acc = rtol_acc * mag  (+ the Q8_1 term below)
//   loose  |out - sum W x|  <= sum |W| |x - x^| + tol_acc      (x's quantisation error)
// rtol_acc = 2 (n + 32) u, u = 2^-24: float accumulation of n products or block partial sums.
// mag = sum over weight blocks of max|W_block| * sum|x^_block| (= sum|W x^| for F32/F16/BF16):
//   types with block offsets (Q4_K's mins, TQ2_0's -1) subtract offset * sum(x) in float, whose
//   rounding is relative to that, not to the (possibly much smaller) sum|W x^|.
// F16 on builds with ARM FP16 vector arithmetic (ARMv8.2-A+fp16: Pi 5, Jetson Orin/Xavier):
//   ggml accumulates in f16 (4 x 8 lanes), rtol_acc = (n/32 + 8) 2^-11.
// Q8_1 (x of Q4_1, Q5_1): each x block also carries s = d sum(q) rounded to f16, which ggml
//   multiplies by the weight block's offset m (|m| <= max|W| of the block):
//   + 2^-10 sum over blocks of max|W_block| |s_block|.
// A wrong row, a wrong stride or an unconverted x is off by about the dot product itself:
// ~sum|W x| / sqrt(n), far above rtol_acc * sum|W x| for these sizes.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "ggml-cpu.h"
#include "ggml.h"
#include "kernels/gather_matvec.h"
#include "test_util.h"

namespace ktest {
namespace {

struct type_case {
    ggml_type type;
    bool required;  // the common GGUF types: must be supported; the rest are tested when they are
};

// Not here: IQ1_*, IQ2_*, IQ3_* (ggml's quantizers for them first build search tables that take
// seconds natively and minutes under qemu, and IQ1_S/IQ2_XXS/IQ2_XS need an importance matrix).
const type_case TYPES[] = {
    {GGML_TYPE_F32, true},    {GGML_TYPE_F16, true},    {GGML_TYPE_BF16, true},   {GGML_TYPE_Q4_0, true},
    {GGML_TYPE_Q4_1, true},   {GGML_TYPE_Q5_0, true},   {GGML_TYPE_Q5_1, true},   {GGML_TYPE_Q8_0, true},
    {GGML_TYPE_Q2_K, true},   {GGML_TYPE_Q3_K, true},   {GGML_TYPE_Q4_K, true},   {GGML_TYPE_Q5_K, true},
    {GGML_TYPE_Q6_K, true},   {GGML_TYPE_IQ4_NL, true}, {GGML_TYPE_IQ4_XS, true}, {GGML_TYPE_TQ1_0, false},
    {GGML_TYPE_TQ2_0, false}, {GGML_TYPE_MXFP4, false}, {GGML_TYPE_NVFP4, false}, {GGML_TYPE_Q1_0, false},
    {GGML_TYPE_Q2_0, false},
};

bool fp16_accumulation(ggml_type t) {
#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
    return t == GGML_TYPE_F16;
#else
    return false;
#endif
}

// x^: the converted x decoded back to floats (ggml has no to_float for Q8_1 and Q8_K).
std::vector<double> decode_x(ggml_type x_type, const std::vector<uint8_t> & xq, int64_t n,
                             std::vector<double> & q8_1_sums) {
    std::vector<double> out(n);
    if (x_type == GGML_TYPE_F32) {
        const float * f = (const float *) xq.data();
        std::copy(f, f + n, out.begin());
    } else if (x_type == GGML_TYPE_Q8_1) {
        // block: f16 d, f16 s, int8 q[32]
        expect(ggml_type_size(x_type) == 36, "Q8_1 block is not {f16 d, f16 s, int8 q[32]}");
        for (int64_t b = 0; b < n / 32; ++b) {
            const uint8_t * blk = xq.data() + b * 36;
            ggml_fp16_t d, s;
            std::memcpy(&d, blk, 2);
            std::memcpy(&s, blk + 2, 2);
            for (int i = 0; i < 32; ++i) {
                out[b * 32 + i] = (double) ggml_fp16_to_fp32(d) * (int8_t) blk[4 + i];
            }
            q8_1_sums.push_back(ggml_fp16_to_fp32(s));
        }
    } else if (x_type == GGML_TYPE_Q8_K) {
        // block: f32 d, int8 q[256], int16 bsums[16]
        expect(ggml_type_size(x_type) == 4 + 256 + 32, "Q8_K block is not {f32 d, int8 q[256], int16 bsums[16]}");
        for (int64_t b = 0; b < n / 256; ++b) {
            const uint8_t * blk = xq.data() + b * 292;
            float d;
            std::memcpy(&d, blk, 4);
            for (int i = 0; i < 256; ++i) {
                out[b * 256 + i] = (double) d * (int8_t) blk[4 + i];
            }
        }
    } else {
        std::vector<float> f(n);
        ggml_get_type_traits(x_type)->to_float(xq.data(), f.data(), n);
        std::copy(f.begin(), f.end(), out.begin());
    }
    return out;
}

struct weights {
    std::vector<uint8_t> bytes;  // n_rows rows, `stride` bytes apart
    size_t stride = 0;
    std::vector<double> W;       // dequantized, [n_rows][n]
};

weights make_weights(ggml_type t, int64_t n_rows, int64_t n, size_t pad, rng & r) {
    std::vector<float> src(n_rows * n);
    for (int64_t i = 0; i < n_rows; ++i) {
        const double row_scale = std::exp(0.5 * r.normal());
        for (int64_t j = 0; j < n; ++j) {
            const double outlier = r.below(50) == 0 ? 4.0 : 1.0;
            src[i * n + j] = (float) (row_scale * outlier * r.normal() / std::sqrt((double) n));
        }
    }
    const size_t row_bytes = ggml_row_size(t, n);
    std::vector<uint8_t> packed(row_bytes * n_rows);
    ggml_quantize_chunk(t, src.data(), packed.data(), 0, n_rows, n, nullptr);
    weights w;
    w.stride = row_bytes + pad;
    w.bytes.assign(w.stride * n_rows, 0xA5);
    w.W.resize(n_rows * n);
    std::vector<float> row(n);
    for (int64_t i = 0; i < n_rows; ++i) {
        std::memcpy(w.bytes.data() + i * w.stride, packed.data() + i * row_bytes, row_bytes);
        if (t == GGML_TYPE_F32) {
            std::memcpy(row.data(), packed.data() + i * row_bytes, row_bytes);
        } else {
            ggml_get_type_traits(t)->to_float(packed.data() + i * row_bytes, row.data(), n);
        }
        std::copy(row.begin(), row.end(), w.W.begin() + i * n);
    }
    return w;
}

std::vector<std::pair<std::string, std::vector<int32_t>>> selections(int64_t n_rows, rng & r) {
    std::vector<int32_t> all(n_rows), third, random;
    std::iota(all.begin(), all.end(), 0);
    for (int32_t i = 1; i < n_rows; i += 3) {
        third.push_back(i);
    }
    for (int32_t i = 0; i < n_rows; ++i) {
        if (r.uniform() < 0.3) {
            random.push_back(i);
        }
    }
    return {{"empty", {}}, {"first", {0}}, {"last", {(int32_t) n_rows - 1}}, {"all", all},
            {"every-third", third}, {"random", random}};
}

// Row lengths for a type whose weight and x blocks are both multiples of `blk`.
std::vector<int64_t> row_lengths(int64_t blk) {
    if (blk == 1) {
        return {1, 7, 33, 100, 513};
    }
    if (blk >= 256) {
        return {blk, 3 * blk};
    }
    return {blk, 3 * blk, 17 * blk};
}

void test_type(const type_case & tc, rng & r) {
    const ggml_type t = tc.type;
    const char * name = ggml_type_name(t);
    const ggml_type_traits_cpu * cpu = ggml_get_type_traits_cpu(t);
    const bool testable = cpu && cpu->vec_dot && (t == GGML_TYPE_F32 || ggml_get_type_traits(t)->to_float) &&
                          !ggml_quantize_requires_imatrix(t);
    if (!testable) {
        expect(!tc.required, fmt("gather_matvec: ggml has no CPU dot product for required type %s", name));
        return;
    }
    const int64_t wblk = ggml_blck_size(t), xblk = ggml_blck_size(cpu->vec_dot_type);
    const int64_t blk = std::max(wblk, xblk);
    expect(blk % std::min(wblk, xblk) == 0, fmt("%s: block sizes %lld / %lld", name, (long long) wblk, (long long) xblk));
    const int64_t n_rows = 37;
    for (int64_t n : row_lengths(blk)) {
        const glass::row_dot rd = glass::row_dot_for(t, n);
        if (!expect(rd.ok && rd.x_type == cpu->vec_dot_type && rd.n == n, fmt("row_dot_for(%s, %lld)", name, (long long) n))) {
            continue;
        }
        for (size_t pad : {(size_t) 0, (size_t) 64}) {
            const weights w = make_weights(t, n_rows, n, pad, r);
            std::vector<float> x(n);
            for (auto & v : x) {
                v = (float) r.normal();
            }
            std::vector<uint8_t> xq(rd.x_row_bytes);
            glass::row_dot_convert_x(rd, x.data(), xq.data());
            std::vector<double> q8_1_sums;
            const std::vector<double> xh = decode_x(rd.x_type, xq, n, q8_1_sums);

            // references and tolerances per row
            const double rtol_acc = fp16_accumulation(t) ? (n / 32.0 + 8) / 2048.0 : 2.0 * (n + 32) * U32;
            std::vector<double> tight(n_rows), loose(n_rows), tol_tight(n_rows), tol_loose(n_rows);
            for (int64_t i = 0; i < n_rows; ++i) {
                const double * Wi = w.W.data() + i * n;
                double s_hat = 0, s = 0, mag = 0, xerr = 0;
                for (int64_t j = 0; j < n; ++j) {
                    s_hat += Wi[j] * xh[j];
                    s += Wi[j] * x[j];
                    xerr += std::fabs(Wi[j]) * std::fabs(x[j] - xh[j]);
                }
                for (int64_t b = 0; b < n; b += wblk) {
                    double wmax = 0, xsum = 0;
                    for (int64_t j = b; j < b + wblk; ++j) {
                        wmax = std::max(wmax, std::fabs(Wi[j]));
                        xsum += std::fabs(xh[j]);
                    }
                    mag += wmax * xsum;
                }
                double extra = 0;
                for (size_t b = 0; b < q8_1_sums.size(); ++b) {
                    double wmax = 0;
                    for (int k = 0; k < 32; ++k) {
                        wmax = std::max(wmax, std::fabs(Wi[b * 32 + k]));
                    }
                    extra += wmax * std::fabs(q8_1_sums[b]) / 1024.0;
                }
                tight[i] = s_hat;
                loose[i] = s;
                tol_tight[i] = rtol_acc * mag + extra + 1e-30;
                tol_loose[i] = xerr + tol_tight[i];
            }

            for (const auto & [sel_name, rows] : selections(n_rows, r)) {
                const std::string what = fmt("gather_matvec %s n=%lld pad=%zu %s", name, (long long) n, pad, sel_name.c_str());
                const float sentinel = -999.0f;
                std::vector<float> out(n_rows, sentinel);
                glass::gather_matvec(rd, w.bytes.data(), w.stride, rows.data(), (int64_t) rows.size(), xq.data(), out.data());
                std::vector<bool> selected(n_rows, false);
                std::vector<double> got, ref_t, ref_l, tt, tl;
                for (int32_t i : rows) {
                    selected[i] = true;
                    got.push_back(out[i]);
                    ref_t.push_back(tight[i]);
                    ref_l.push_back(loose[i]);
                    tt.push_back(tol_tight[i]);
                    tl.push_back(tol_loose[i]);
                }
                bool others_kept = true;
                for (int64_t i = 0; i < n_rows; ++i) {
                    others_kept = others_kept && (selected[i] || out[i] == sentinel);
                }
                expect(others_kept, what + ": wrote rows outside the selection");
                const std::string rec = std::string("gather_matvec/ggml-") + name;
                expect_within(what + " vs W x^", rec, got, ref_t, tt);
                expect_within(what + " vs W x", "", got, ref_l, tl);
                // a row's value does not depend on which other rows are selected
                if (sel_name == "random" && !rows.empty()) {
                    std::vector<float> alone(n_rows, sentinel);
                    glass::gather_matvec(rd, w.bytes.data(), w.stride, rows.data() + rows.size() / 2, 1, xq.data(),
                                         alone.data());
                    const int32_t i = rows[rows.size() / 2];
                    expect(alone[i] == out[i], what + ": a row alone differs from the same row in a set");
                }
            }
            if (t == GGML_TYPE_Q4_0 && pad == 0 && n == 3 * blk) {
                // the checks can fail: the next row's values as the reference
                std::vector<int32_t> rows(n_rows - 1);
                std::iota(rows.begin(), rows.end(), 0);
                std::vector<float> out(n_rows, 0.0f);
                glass::gather_matvec(rd, w.bytes.data(), w.stride, rows.data(), n_rows - 1, xq.data(), out.data());
                std::vector<double> got(out.begin(), out.end() - 1), shifted(tight.begin() + 1, tight.end());
                std::vector<double> tol(tol_tight.begin(), tol_tight.end() - 1);
                expect(compare(got, shifted, tol).ratio > 1.0, "gather_matvec checker: an off-by-one row went unnoticed");
            }
        }
    }
    // row lengths that are not whole blocks are refused
    if (blk > 1) {
        expect(!glass::row_dot_for(t, blk + blk / 2).ok, fmt("row_dot_for(%s, %lld) accepted a partial block", name,
                                                              (long long) (blk + blk / 2)));
    }
}

}  // namespace

void test_gather_matvec() {
    rng r(4242);
    for (const type_case & tc : TYPES) {
        test_type(tc, r);
    }
    expect(!glass::row_dot_for(GGML_TYPE_I32, 64).ok, "row_dot_for accepted I32 (no CPU dot product)");
}

}  // namespace ktest
