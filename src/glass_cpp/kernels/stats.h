// stats: the prefill statistics of FFN neurons (GRIFFIN-style, per-token normalised).
//
// For every token t and neuron j of one layer, with h the FFN hidden activation (input of
// ffn_down) and c_j = ||W_down[:, j]||:
//     activation: a_tj = h_tj / ||h_t||            act_sum[j] += a_tj^2
//     impact:     i_tj = h_tj c_j / ||h_t * c||    imp_sum[j] += i_tj^2
// sqrt(sum) is the L2 norm over tokens of the unit-normalised per-token vectors.
#pragma once

#include <cstdint>
#include <vector>

#include "kernel_paths.h"

namespace glass {

// Both functions use the best path of stats_paths() this CPU runs.

// inv_act[t] = 1/||h_t||, inv_imp[t] = 1/||h_t * c|| (0 for an all-zero token).
void stats_token_norms(const float * h, int64_t n_ff, int64_t row_stride, int64_t t0, int64_t t1,
                       const float * col_norm, float * inv_act, float * inv_imp);

// Accumulate neurons [j0, j1) over tokens [t0, t1) into act_sum / imp_sum.
void stats_accumulate(const float * h, int64_t row_stride, int64_t t0, int64_t t1,
                      const float * col_norm, const float * inv_act, const float * inv_imp,
                      int64_t j0, int64_t j1, float * act_sum, float * imp_sum);

// One path: both functions, same arguments as above.
struct stats_fns {
    void (*token_norms)(const float * h, int64_t n_ff, int64_t row_stride, int64_t t0, int64_t t1,
                        const float * col_norm, float * inv_act, float * inv_imp);
    void (*accumulate)(const float * h, int64_t row_stride, int64_t t0, int64_t t1,
                       const float * col_norm, const float * inv_act, const float * inv_imp,
                       int64_t j0, int64_t j1, float * act_sum, float * imp_sum);
};

// Every path compiled into this build, the scalar reference first ("scalar", then "avx2" on x86,
// "neon" on aarch64); the tests run each one that runs_here against the reference.
// The norms are summed in double on every path (only the summation order differs); the sums
// are float with one FMA per term on the SIMD paths.
const std::vector<kernel_path<stats_fns>> & stats_paths();

}  // namespace glass
