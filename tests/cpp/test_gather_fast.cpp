// The hand-written gathered dot products, gather_q4k (Q4_K x Q8_K) and gather_q4_0 (Q4_0 x Q8_0),
// each path (scalar reference, AVX-512 VNNI) against a double reference built from ggml's
// dequantization of the weights and of ggml's quantized x, and against ggml's own vec_dot.
//
// Reference: out[r] = sum_j W[r][j] x^[j], W = ggml's to_float of the row, x^ = d * q of ggml's
// Q8_K / Q8_0 blocks, in the original order: a wrong regrouping moves values onto the wrong codes
// and is off by about the dot product itself. Tolerance, as in test_gather_matvec.cpp:
// 2 (n + 32) u * mag, mag = sum over 256-value spans of max|W| * sum|x^| (offsets, Q4_K's mins
// and Q4_0's -8, are subtracted in float, so rounding is relative to that, not to sum|W x^|).
// Against ggml's vec_dot: twice that.
#include <cmath>
#include <cstring>

#include "ggml-cpu.h"
#include "ggml.h"
#include "kernels/gather_matvec.h"
#include "kernels/gather_q4_0.h"
#include "kernels/gather_q4k.h"
#include "test_util.h"

namespace ktest {

namespace {

// One hand-written gather family: its weight type, x regrouping and paths.
struct family {
    const char * name;
    ggml_type type;
    void (*regroup_x)(const void * xq, void * xr, int64_t n);
    size_t (*x_bytes)(int64_t n);
    const std::vector<glass::kernel_path<glass::gather_rows_fn>> & paths;
};

// x^ = ggml's quantized x decoded (Q8_K: f32 d, int8[256], int16 sums; Q8_0: f16 d, int8[32])
std::vector<double> decode_x(ggml_type x_type, const std::vector<uint8_t> & xq, int64_t n) {
    std::vector<double> out(n);
    const int bs = x_type == GGML_TYPE_Q8_K ? 256 : 32;
    const size_t bytes = ggml_type_size(x_type), qs_at = x_type == GGML_TYPE_Q8_K ? 4 : 2;
    for (int64_t b = 0; b < n / bs; ++b) {
        const uint8_t * blk = xq.data() + b * bytes;
        double d;
        if (x_type == GGML_TYPE_Q8_K) {
            float f;
            std::memcpy(&f, blk, 4);
            d = f;
        } else {
            ggml_fp16_t h;
            std::memcpy(&h, blk, 2);
            d = ggml_fp16_to_fp32(h);
        }
        for (int i = 0; i < bs; ++i) {
            out[b * bs + i] = d * (int8_t) blk[qs_at + i];
        }
    }
    return out;
}

void check_family(const family & fam, rng & r) {
    for (const int64_t n : {256, 512, 2048, 2304}) {
        const int64_t n_rows = 48;
        const size_t row_bytes = ggml_row_size(fam.type, n);

        // weights with a per-row scale and a few outliers; x with a non-zero mean (exercises the offsets)
        std::vector<float> src(n_rows * n), x(n), W(n_rows * n);
        for (int64_t i = 0; i < n_rows; ++i) {
            const double scale = std::exp(0.5 * r.normal());
            for (int64_t j = 0; j < n; ++j) {
                src[i * n + j] = (float) (scale * (r.below(40) == 0 ? 5.0 : 1.0) * r.normal());
            }
        }
        for (auto & v : x) {
            v = (float) (0.3 + r.normal());
        }
        std::vector<uint8_t> w(row_bytes * n_rows);
        ggml_quantize_chunk(fam.type, src.data(), w.data(), 0, n_rows, n, nullptr);
        ggml_get_type_traits(fam.type)->to_float(w.data(), W.data(), n_rows * n);

        const glass::row_dot rd = glass::row_dot_for(fam.type, n);
        std::vector<uint8_t> xq(rd.x_row_bytes), xr(fam.x_bytes(n));
        glass::row_dot_convert_x(rd, x.data(), xq.data());
        fam.regroup_x(xq.data(), xr.data(), n);
        const std::vector<double> xhat = decode_x(rd.x_type, xq, n);

        // every other row (the last one included); the others must stay 0
        std::vector<int32_t> rows;
        for (int32_t i = 1; i < n_rows; i += 2) {
            rows.push_back(i);
        }
        std::vector<double> ref(n_rows, 0.0), tol(n_rows, 1e-30);
        for (int32_t i : rows) {
            double s = 0, mag = 0;
            for (int64_t b = 0; b < n / 256; ++b) {
                double wmax = 0, xsum = 0;
                for (int64_t j = b * 256; j < (b + 1) * 256; ++j) {
                    s += (double) W[i * n + j] * xhat[j];
                    wmax = std::fmax(wmax, std::fabs((double) W[i * n + j]));
                    xsum += std::fabs(xhat[j]);
                }
                mag += wmax * xsum;
            }
            ref[i] = s;
            tol[i] = 2.0 * (n + 32) * U32 * mag;
        }

        std::vector<float> ggml_out(n_rows, 0.0f);
        glass::gather_matvec(rd, w.data(), row_bytes, rows.data(), (int64_t) rows.size(), xq.data(), ggml_out.data());
        for (const auto & p : fam.paths) {
            if (!p.runs_here) {
                continue;
            }
            std::vector<float> out(n_rows, 0.0f);
            p.fns(w.data(), row_bytes, rows.data(), (int64_t) rows.size(), xr.data(), n, out.data());
            const std::string what = fmt("%s/%s n=%lld", fam.name, p.name, (long long) n);
            expect_within(what + " vs dequantized reference", std::string(fam.name) + "/" + p.name,
                          as_double(out.data(), out.size()), ref, tol);
            std::vector<double> tol2(tol);
            for (auto & t : tol2) {
                t *= 2;
            }
            expect_within(what + " vs ggml vec_dot", "", as_double(out.data(), out.size()),
                          as_double(ggml_out.data(), ggml_out.size()), tol2);
        }
    }
}

size_t q8k_bytes(int64_t n) { return (size_t) (n / glass::Q4K_BLOCK) * glass::Q8K_BLOCK_BYTES; }

}  // namespace

void test_gather_fast() {
    expect(ggml_row_size(GGML_TYPE_Q4_K, 256) == glass::Q4K_BLOCK_BYTES, "Q4_K block is not 144 bytes");
    expect(ggml_row_size(GGML_TYPE_Q4_0, 32) == glass::Q4_0_BLOCK_BYTES, "Q4_0 block is not 18 bytes");
    expect(ggml_row_size(GGML_TYPE_Q8_0, 32) == glass::Q8_0_BLOCK_BYTES, "Q8_0 block is not 34 bytes");
    expect_path_list("gather_q4k", glass::gather_q4k_paths(), (glass::gather_rows_fn) glass::gather_q4k_ref,
                     glass::kernel_path_best(glass::gather_q4k_paths()).name);
    expect_path_list("gather_q4_0", glass::gather_q4_0_paths(), (glass::gather_rows_fn) glass::gather_q4_0_ref,
                     glass::kernel_path_best(glass::gather_q4_0_paths()).name);
    rng r(4242);
    check_family({"gather_q4k", GGML_TYPE_Q4_K, glass::q4k_regroup_x, q8k_bytes, glass::gather_q4k_paths()}, r);
    check_family({"gather_q4_0", GGML_TYPE_Q4_0, glass::q4_0_regroup_x, glass::q4_0_x_bytes, glass::gather_q4_0_paths()}, r);
}

}  // namespace ktest
