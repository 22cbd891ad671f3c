// ffn_layout: the weight layouts the sparse path reads, behind one small interface.
//
// up/gate are read in place (their rows are neurons). ffn_down's neurons are its columns, so a
// neuron-major copy of it is built once per model: int8 rows with one float scale per 32 values
// (about 1.1 bytes per weight), plus each neuron's column norm ||W_down[:, j]|| for the impact
// statistic. Reading a selected neuron's row reads only that neuron's bytes.
#pragma once

#include <cstdint>
#include <vector>

#include "ggml.h"
#include "kernels/down_axpy.h"

namespace glass {

struct down_layout {
    int64_t n_ff   = 0;          // neurons
    int64_t n_embd = 0;          // outputs
    int64_t n_blk  = 0;          // ceil(n_embd / 32)
    std::vector<int8_t> q;       // [n_ff][n_blk * 32]
    std::vector<float>  d;       // [n_ff][n_blk]
    std::vector<float>  col_norm;  // [n_ff], from the original (dequantized) weights

    nm_matrix_view view() const { return {q.data(), d.data(), n_ff, n_blk}; }
    size_t bytes() const { return q.size() + d.size() * sizeof(float) + col_norm.size() * sizeof(float); }
};

// Builds the neuron-major copy of a ggml ffn_down weight (ne0 = n_ff, ne1 = n_embd, any type
// ggml can dequantize), with n_threads threads.
void down_layout_build(down_layout & out, const ggml_tensor * down, int n_threads);

// The same from F32 data laid out like ggml's: n_embd rows of n_ff values (used by tests).
void down_layout_build_f32(down_layout & out, const float * w, int64_t n_ff, int64_t n_embd);

}  // namespace glass
