// gather_q4_0: the row-gathered up/gate projection for Q4_0 weights, with AVX-512 VNNI.
//
// Why, as for Q4_K (gather_q4k.h): ggml's x86 Q4_0 x Q8_0 dot product is 256-bit AVX2 with the
// sign tricks of `maddubs`; one `vpdpbusd` here multiplies and sums 64 byte pairs.
//
// Q4_0 block (18 bytes): fp16 d, 16 bytes of codes (byte i: value i in the low nibble, value 16+i
// in the high); w = d * (q - 8). x is quantized to Q8_0 by ggml (fp16 d, 32 int8) and then
// regrouped by q4_0_regroup_x, four blocks (128 values) at a time, into
//     int8 lo[64]     values 0-15 of blocks 0..3, 16 each
//     int8 hi[64]     values 16-31 of blocks 0..3
//     float d[4]      the blocks' scales
//     int32 s8[4]     8 * sum of each block's values (the -8 of the codes, applied once)
// so a 64-byte load of x lines up with the low or high nibbles of four blocks' codes. The result
// is ggml's: sum over blocks of d_w * d_x * sum((q - 8) * x); integer sums are exact, only float
// additions are ordered differently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "gather_matvec.h"
#include "kernel_paths.h"

namespace glass {

constexpr int Q4_0_GROUP = 128;             // values per regrouped x group (4 blocks)
constexpr size_t Q4_0_BLOCK_BYTES = 18;     // sizeof(block_q4_0)
constexpr size_t Q8_0_BLOCK_BYTES = 34;     // sizeof(block_q8_0)
constexpr size_t Q4_0_X_GROUP_BYTES = 160;  // one regrouped x group

// Bytes of x regrouped for n values (n a multiple of 128).
inline size_t q4_0_x_bytes(int64_t n) { return (size_t) (n / Q4_0_GROUP) * Q4_0_X_GROUP_BYTES; }

// x (ggml Q8_0, n values, n a multiple of 128) -> the groups above (xr: q4_0_x_bytes(n)).
void q4_0_regroup_x(const void * xq, void * xr, int64_t n);

// out[rows[i]] = dot(W row rows[i], x) for i < n_rows; xr from q4_0_regroup_x. Scalar reference.
void gather_q4_0_ref(const void * w, size_t w_row_stride, const int32_t * rows, int64_t n_rows,
                     const void * xr, int64_t n, float * out);

// Every path compiled into this build, the scalar reference first and the best last. The plug-in
// runs the best one (kernel_path_fast), or ggml's own dot product where only the reference runs.
const std::vector<kernel_path<gather_rows_fn>> & gather_q4_0_paths();

}  // namespace glass
