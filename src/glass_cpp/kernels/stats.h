// stats: the prefill statistics of FFN neurons (GRIFFIN-style, per-token normalised).
//
// For every token t and neuron j of one layer, with h the FFN hidden activation (input of
// ffn_down) and c_j = ||W_down[:, j]||:
//     activation: a_tj = h_tj / ||h_t||            act_sum[j] += a_tj^2
//     impact:     i_tj = h_tj c_j / ||h_t * c||    imp_sum[j] += i_tj^2
// sqrt(sum) is the L2 norm over tokens of the unit-normalised per-token vectors.
#pragma once

#include <cstdint>

namespace glass {

// inv_act[t] = 1/||h_t||, inv_imp[t] = 1/||h_t * c|| (0 for an all-zero token).
void stats_token_norms(const float * h, int64_t n_ff, int64_t row_stride, int64_t t0, int64_t t1,
                       const float * col_norm, float * inv_act, float * inv_imp);

// Accumulate neurons [j0, j1) over tokens [t0, t1) into act_sum / imp_sum.
void stats_accumulate(const float * h, int64_t row_stride, int64_t t0, int64_t t1,
                      const float * col_norm, const float * inv_act, const float * inv_imp,
                      int64_t j0, int64_t j1, float * act_sum, float * imp_sum);

}  // namespace glass
