// down_axpy: the column-gathered down projection.
//
// ffn_down is kept neuron-major (one row of n_embd values per FFN neuron), as int8 with one float
// scale per block of 32 values. The sparse down projection is then a sum of scaled rows:
//     y += h[j] * W_down[:, j]   for every selected neuron j
// so only the selected neurons' bytes are read.
#pragma once

#include <cstdint>
#include <vector>

#include "kernel_paths.h"

namespace glass {

constexpr int NM_BLOCK = 32;  // values per int8 block (one float scale each)

// One neuron-major matrix: n_rows neurons, each n_blk blocks of NM_BLOCK int8 + n_blk scales.
struct nm_matrix_view {
    const int8_t * q;   // [n_rows][n_blk * NM_BLOCK]
    const float  * d;   // [n_rows][n_blk]
    int64_t n_rows;
    int64_t n_blk;
};

// For the output blocks [blk0, blk1): y += sum over i < k of h[idx[i]] * row(idx[i]), where y
// points at block blk0 (y[(b - blk0) * 32 + t] is output value b * 32 + t).  Scalar reference.
void down_axpy_ref(const nm_matrix_view & w, const int32_t * idx, int64_t k, const float * h,
                   float * y, int64_t blk0, int64_t blk1);

// Same, with the best path of down_axpy_paths() this CPU runs (AVX-512, AVX2, NEON or scalar).
void down_axpy(const nm_matrix_view & w, const int32_t * idx, int64_t k, const float * h,
               float * y, int64_t blk0, int64_t blk1);

// Name of the path down_axpy uses ("avx512", "avx2", "neon" or "scalar").
const char * down_axpy_path();

using down_axpy_fn = void (*)(const nm_matrix_view & w, const int32_t * idx, int64_t k, const float * h,
                              float * y, int64_t blk0, int64_t blk1);

// Every path compiled into this build, the scalar reference first and the best last; the tests
// run each one that runs_here against the reference. Every path adds the neurons in idx order,
// so paths differ from the reference only by FMA rounding.
const std::vector<kernel_path<down_axpy_fn>> & down_axpy_paths();

}  // namespace glass
