// gather_q4k (Q4_K x Q8_K over selected rows; scalar reference and AVX-512 VNNI) against a double
// reference built from ggml's dequantization of the weights and of the Q8_K x, and against ggml's
// own vec_dot on the same rows.
//
// Reference: out[r] = sum_j W[r][j] x^[j], W = ggml's to_float of the Q4_K row, x^ = d * q of the
// Q8_K blocks (in the original order: a wrong reorder moves values onto the wrong codes and is off
// by about the dot product itself). Tolerance, as in test_gather_matvec.cpp: 2 (n + 32) u * mag,
// mag = sum over 256-blocks of max|W_block| * sum|x^_block| (the block mins are subtracted in
// float, so rounding is relative to that, not to sum|W x^|). Against ggml's vec_dot: twice that.
#include <cmath>
#include <cstring>

#include "ggml-cpu.h"
#include "ggml.h"
#include "kernels/gather_matvec.h"
#include "kernels/gather_q4k.h"
#include "test_util.h"

namespace ktest {

void test_gather_q4k() {
    expect_path_list("gather_q4k", glass::gather_q4k_paths(), (glass::gather_q4k_fn) glass::gather_q4k_ref,
                     glass::kernel_path_best(glass::gather_q4k_paths()).name);
    rng r(4242);
    for (const int64_t n : {256, 512, 2048, 2304}) {
        const int64_t n_rows = 48;
        const size_t row_bytes = ggml_row_size(GGML_TYPE_Q4_K, n);
        expect(row_bytes == (size_t) (n / 256) * glass::Q4K_BLOCK_BYTES, "Q4_K block is not 144 bytes");

        // weights with a per-row scale and a few outliers; x with a non-zero mean (exercises the mins)
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
        ggml_quantize_chunk(GGML_TYPE_Q4_K, src.data(), w.data(), 0, n_rows, n, nullptr);
        ggml_get_type_traits(GGML_TYPE_Q4_K)->to_float(w.data(), W.data(), n_rows * n);

        const glass::row_dot rd = glass::row_dot_for(GGML_TYPE_Q4_K, n);
        expect(rd.ok && rd.x_type == GGML_TYPE_Q8_K, "Q4_K's dot product does not take Q8_K");
        std::vector<uint8_t> xq(rd.x_row_bytes), xr(rd.x_row_bytes);
        glass::row_dot_convert_x(rd, x.data(), xq.data());
        glass::q8k_reorder(xq.data(), xr.data(), n);
        std::vector<double> xhat(n);
        for (int64_t b = 0; b < n / 256; ++b) {
            float d;
            std::memcpy(&d, xq.data() + b * glass::Q8K_BLOCK_BYTES, 4);
            for (int i = 0; i < 256; ++i) {
                xhat[b * 256 + i] = (double) d * (int8_t) xq[b * glass::Q8K_BLOCK_BYTES + 4 + i];
            }
        }

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
        for (const auto & p : glass::gather_q4k_paths()) {
            if (!p.runs_here) {
                continue;
            }
            std::vector<float> out(n_rows, 0.0f);  // unselected rows must stay 0
            p.fns(w.data(), row_bytes, rows.data(), (int64_t) rows.size(), xr.data(), n, out.data());
            const std::string what = fmt("gather_q4k/%s n=%lld", p.name, (long long) n);
            expect_within(what + " vs dequantized reference", std::string("gather_q4k/") + p.name,
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

}  // namespace ktest
