// gather_matvec: the row-gathered up/gate projection.
//
// ggml stores a [n_embd -> n_ff] weight as n_ff rows of n_embd values, one row per FFN neuron, in
// any quant type. The sparse projection computes only the selected rows' dot products, with
// ggml's own per-type CPU dot product (the same one ggml's dense matmul uses), so every type that
// ggml can multiply on the CPU works and selected outputs match the dense ones exactly.
// It has no SIMD of its own: the NEON / dotprod / AVX2 / AVX-512 code is ggml's, compiled for the
// CPU ggml was built for (tests/cpp/test_gather_matvec.cpp checks every type on x86 and aarch64).
#pragma once

#include <cstddef>
#include <cstdint>

#include "ggml.h"

namespace glass {

// The dot-product kernel of one weight type (from ggml_get_type_traits_cpu).
struct row_dot {
    ggml_type  w_type;
    ggml_type  x_type;       // the type x is converted to before the dot product
    size_t     x_row_bytes;  // bytes of one converted x row of n values
    int64_t    n;            // values per row
    bool ok;                 // false: ggml has no CPU dot product for w_type
};

row_dot row_dot_for(ggml_type w_type, int64_t n);

// Convert one F32 row of n values into the dot kernel's x type (xq must hold x_row_bytes).
void row_dot_convert_x(const row_dot & rd, const float * x, void * xq);

// out[rows[i]] = dot(W row rows[i], xq) for i < n_rows.  w_row_stride is the weight's nb[1].
void gather_matvec(const row_dot & rd, const void * w, size_t w_row_stride,
                   const int32_t * rows, int64_t n_rows, const void * xq, float * out);

// The hand-written gathers for single types (gather_q4k.h, gather_q4_0.h): the same product for
// the rows of one weight type, x already in the layout that kernel reads (xr, n values).
using gather_rows_fn = void (*)(const void * w, size_t w_row_stride, const int32_t * rows, int64_t n_rows,
                                const void * xr, int64_t n, float * out);

}  // namespace glass
