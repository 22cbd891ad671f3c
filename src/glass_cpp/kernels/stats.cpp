// stats: plain loops (the compiler vectorises them); the prefill pass reads h once per neuron.
#include "stats.h"

#include <cmath>

namespace glass {

void stats_token_norms(const float * h, int64_t n_ff, int64_t row_stride, int64_t t0, int64_t t1,
                       const float * col_norm, float * inv_act, float * inv_imp) {
    for (int64_t t = t0; t < t1; ++t) {
        const float * ht = h + t * row_stride;
        double sa = 0.0, si = 0.0;
        for (int64_t j = 0; j < n_ff; ++j) {
            const double v = ht[j];
            const double vc = v * col_norm[j];
            sa += v * v;
            si += vc * vc;
        }
        inv_act[t] = sa > 0.0 ? (float) (1.0 / std::sqrt(sa)) : 0.0f;
        inv_imp[t] = si > 0.0 ? (float) (1.0 / std::sqrt(si)) : 0.0f;
    }
}

void stats_accumulate(const float * h, int64_t row_stride, int64_t t0, int64_t t1,
                      const float * col_norm, const float * inv_act, const float * inv_imp,
                      int64_t j0, int64_t j1, float * act_sum, float * imp_sum) {
    for (int64_t t = t0; t < t1; ++t) {
        const float * ht = h + t * row_stride;
        const float ia = inv_act[t];
        const float ii = inv_imp[t];
        for (int64_t j = j0; j < j1; ++j) {
            const float a = ht[j] * ia;
            const float i = ht[j] * col_norm[j] * ii;
            act_sum[j] += a * a;
            imp_sum[j] += i * i;
        }
    }
}

}  // namespace glass
