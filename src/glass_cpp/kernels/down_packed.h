// down_packed: the column-gathered down projection at the weight's own bit width.
//
// ggml stores ffn_down as n_embd rows of n_ff values, quantized in blocks along n_ff: a neuron's
// weights (a column) are scattered over every row's blocks. The packed layout re-lays the same
// integers out neuron-major, without changing a value: neuron j gets one row of codes q[j][i]
// (4, 6 or 8 bits, exactly the original block's), and the scales, which the original format
// shares between neighbouring neurons of one output row, become table rows over the outputs:
//     W[i][j] = a[i] * (q[j][i] - zero) - b[i]
//     a = da[j / S][i] * sa[j / G][i],   b = db[j / S][i] * sb[j / G][i]
// with da, db the block's fp16 scales (one per S neurons) and sa, sb its small integer
// sub-scales (one per group of G neurons; absent = 1, absent db = no offset):
//   Q4_0: 4-bit codes, zero 8, S = G = 32, no sa       Q8_0: signed 8-bit codes, S = G = 32
//   Q4_K: 4-bit codes, S 256, G 32, sa = sc, sb = m    Q6_K: 6-bit codes, zero 32, S 256, G 16
// The products are the ones ggml's own dequantization forms, so no value changes. The sparse
// product weights the kept neurons' codes by h and sums them per group, then applies that
// group's scales once:
//     y[i] += a[i] * (sum_j h_j q[j][i] - zero * H) - b[i] * H,     H = sum_j h_j
// so decode reads the kept neurons' codes plus the scale rows of the groups that keep a neuron:
// the original bytes per weight.
//
// Codes, per neuron, in blocks of 32 outputs (i = 32 * blk + t):
//   u4  16 bytes: byte t (t < 16) holds output t in its low nibble and output t + 16 in its high
//   u6  the u4 16 bytes (low 4 bits), then 8 bytes: byte t holds the high 2 bits of outputs
//       t, t + 8, t + 16, t + 24 in bits 0-1, 2-3, 4-5, 6-7
//   s8  32 signed bytes, output t in byte t
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernel_paths.h"

namespace glass {

constexpr int PK_BLOCK = 32;  // outputs per code block

enum class pk_codes { u4, u6, s8 };

inline int pk_block_bytes(pk_codes c) { return c == pk_codes::u4 ? 16 : c == pk_codes::u6 ? 24 : 32; }

struct packed_view {
    const uint8_t  * codes;  // [n_ff][n_blk * pk_block_bytes]
    const uint16_t * da;     // fp16 [n_ff / super][n_embd]
    const int8_t   * sa;     // [n_ff / group][n_embd], or null (1)
    const uint16_t * db;     // fp16 [n_ff / super][n_embd], or null (no offset term)
    const int8_t   * sb;     // [n_ff / group][n_embd], with db
    pk_codes code;
    int zero;                // code offset (8, 32 or 0)
    int group;               // G: neurons per sub-scale (32 or 16)
    int super;               // S: neurons per fp16 scale (256, or 32 = group)
    int64_t n_ff;
    int64_t n_embd;          // a multiple of 32
    int64_t n_blk;           // n_embd / 32
};

// IEEE half -> float (the reference's own; SIMD paths use the hardware conversion).
float pk_half_to_float(uint16_t h);

// For output blocks [blk0, blk1): y += sum over i < k of h[idx[i]] * W[:, idx[i]], with y pointing
// at block blk0. idx is ascending (neurons of one group are adjacent). acc is scratch of
// (blk1 - blk0) * 32 floats. Scalar reference.
void down_packed_axpy_ref(const packed_view & w, const int32_t * idx, int64_t k, const float * h,
                          float * y, int64_t blk0, int64_t blk1, float * acc);

// Same, with the best path this CPU runs (AVX-512, AVX2, NEON or scalar).
void down_packed_axpy(const packed_view & w, const int32_t * idx, int64_t k, const float * h,
                      float * y, int64_t blk0, int64_t blk1, float * acc);

const char * down_packed_path();

using down_packed_fn = void (*)(const packed_view & w, const int32_t * idx, int64_t k, const float * h,
                                float * y, int64_t blk0, int64_t blk1, float * acc);

// Every path compiled into this build, the scalar reference first and the best last. Paths add
// the same terms in the same order as the reference; they differ only by FMA rounding.
const std::vector<kernel_path<down_packed_fn>> & down_packed_paths();

}  // namespace glass
