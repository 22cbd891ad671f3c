// ffn_layout: building the neuron-major int8 copy of ffn_down.
#include "ffn_layout.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <thread>

namespace glass {

// Transposes and quantizes output rows [i0, i0 + 32) (one int8 block of every neuron).
// rows(i, buf) must fill buf with the n_ff values of output row i.
static void quantize_block(down_layout & out, int64_t blk, std::vector<float> & rows_buf,
                           const std::function<void(int64_t, float *)> & rows, std::vector<double> & sumsq) {
    const int64_t n_ff = out.n_ff;
    const int64_t i0 = blk * NM_BLOCK;
    const int64_t n_valid = std::min<int64_t>(NM_BLOCK, out.n_embd - i0);
    rows_buf.assign((size_t) NM_BLOCK * n_ff, 0.0f);  // rows past n_embd stay zero (padding)
    for (int64_t r = 0; r < n_valid; ++r) {
        rows(i0 + r, rows_buf.data() + r * n_ff);
    }
    for (int64_t j = 0; j < n_ff; ++j) {
        float amax = 0.0f;
        for (int r = 0; r < NM_BLOCK; ++r) {
            const float v = rows_buf[r * n_ff + j];
            amax = std::max(amax, std::fabs(v));
            sumsq[j] += (double) v * v;
        }
        const float dq = amax / 127.0f;
        const float inv = dq > 0.0f ? 1.0f / dq : 0.0f;
        int8_t * q = out.q.data() + (j * out.n_blk + blk) * NM_BLOCK;
        for (int r = 0; r < NM_BLOCK; ++r) {
            q[r] = (int8_t) std::lrintf(rows_buf[r * n_ff + j] * inv);
        }
        out.d[j * out.n_blk + blk] = dq;
    }
}

static void build(down_layout & out, int64_t n_ff, int64_t n_embd, int n_threads,
                  const std::function<void(int64_t, float *)> & rows) {
    out.n_ff = n_ff;
    out.n_embd = n_embd;
    out.n_blk = (n_embd + NM_BLOCK - 1) / NM_BLOCK;
    out.q.assign((size_t) n_ff * out.n_blk * NM_BLOCK, 0);
    out.d.assign((size_t) n_ff * out.n_blk, 0.0f);
    n_threads = (int) std::max<int64_t>(1, std::min<int64_t>(n_threads, out.n_blk));
    std::vector<std::vector<double>> sumsq(n_threads, std::vector<double>(n_ff, 0.0));
    std::vector<std::thread> workers;
    for (int ith = 0; ith < n_threads; ++ith) {
        workers.emplace_back([&, ith] {
            std::vector<float> buf;
            for (int64_t blk = ith; blk < out.n_blk; blk += n_threads) {
                quantize_block(out, blk, buf, rows, sumsq[ith]);
            }
        });
    }
    for (auto & w : workers) {
        w.join();
    }
    out.col_norm.assign(n_ff, 0.0f);
    for (int64_t j = 0; j < n_ff; ++j) {
        double s = 0.0;
        for (int ith = 0; ith < n_threads; ++ith) {
            s += sumsq[ith][j];
        }
        out.col_norm[j] = (float) std::sqrt(s);
    }
}

void down_layout_build(down_layout & out, const ggml_tensor * down, int n_threads) {
    const ggml_type_traits * tr = ggml_get_type_traits(down->type);
    const char * base = (const char *) down->data;
    const int64_t n_ff = down->ne[0];
    build(out, n_ff, down->ne[1], n_threads, [&](int64_t i, float * dst) {
        const char * row = base + i * down->nb[1];
        if (down->type == GGML_TYPE_F32) {
            std::copy((const float *) row, (const float *) row + n_ff, dst);
        } else {
            tr->to_float(row, dst, n_ff);
        }
    });
}

void down_layout_build_f32(down_layout & out, const float * w, int64_t n_ff, int64_t n_embd) {
    build(out, n_ff, n_embd, 1, [&](int64_t i, float * dst) {
        std::copy(w + i * n_ff, w + (i + 1) * n_ff, dst);
    });
}

}  // namespace glass
