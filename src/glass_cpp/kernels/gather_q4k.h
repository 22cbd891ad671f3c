// gather_q4k: the row-gathered up/gate projection for Q4_K weights, with AVX-512 VNNI.
//
// gather_matvec runs ggml's own dot product per gathered row; for Q4_K on x86 that is a 256-bit
// AVX2 kernel (byte multiply-adds, then a 16-bit multiply-add with the sub-block scales). On a
// CPU with AVX-512 VNNI one `vpdpbusd` multiplies and sums 64 code/activation byte pairs at once,
// so a gathered row needs about half the instructions; decode's sparse up/gate is compute-bound
// on small CPUs, so that is time saved (docs/perf.md).
//
// Same inputs as ggml: Q4_K weight rows (blocks of 256: fp16 d and dmin, twelve bytes of 6-bit
// sub-block scales and mins, 128 bytes of 4-bit codes) and x quantized to Q8_K by ggml
// (quantize_row_q8_K: float d, 256 int8, 16 sums of 16). One step more: x's int8 values are
// regrouped per block (q4k_regroup_x) so that a 64-byte load of x lines up with the low or high
// nibbles of a 64-byte load of codes:
//   codes bytes [0, 64):   low nibbles = values 0-31 and 64-95,    high = 32-63 and 96-127
//   codes bytes [64, 128): low nibbles = values 128-159, 192-223,  high = 160-191, 224-255
// The products are ggml's: per block, d * dx * sum_i sc_i * sum(q * x) - dmin * dx * sum_i m_i *
// (x sums of sub-block i). Integer sums are exact; only the float additions are ordered
// differently from ggml's (tests compare at 1e-5 of the sum of |terms|).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "gather_matvec.h"
#include "kernel_paths.h"

namespace glass {

constexpr int Q4K_BLOCK = 256;           // values per block (QK_K)
constexpr size_t Q4K_BLOCK_BYTES = 144;  // sizeof(block_q4_K)
constexpr size_t Q8K_BLOCK_BYTES = 292;  // sizeof(block_q8_K)

// x (ggml Q8_K, n values) -> the same blocks with their int8 values in the order above.
void q4k_regroup_x(const void * xq, void * xr, int64_t n);

// out[rows[i]] = dot(W row rows[i], x) for i < n_rows; xr from q4k_regroup_x. Scalar reference.
void gather_q4k_ref(const void * w, size_t w_row_stride, const int32_t * rows, int64_t n_rows,
                    const void * xr, int64_t n, float * out);

// Every path compiled into this build, the scalar reference first and the best last. The plug-in
// runs the best one (kernel_path_fast), or ggml's own dot product where only the reference runs.
const std::vector<kernel_path<gather_rows_fn>> & gather_q4k_paths();

}  // namespace glass
