// masks: the per-context state of the sparse path: the installed masks and the prefill
// statistics being collected.
//
// One glass_context belongs to one llama_context (attached when llama.cpp creates the context's
// backends), so two models or contexts in one process never see each other's masks.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "ffn_weights.h"

namespace glass {

struct glass_context {
    std::shared_ptr<ffn_model> model;

    // masks[il]: selected neurons of layer il, ascending; empty = dense layer
    std::vector<std::vector<int32_t>> masks;
    // the same rows shifted for a fused gate+up weight: idx and idx + n_ff
    std::vector<std::vector<int32_t>> masks_fused;
    bool any_mask = false;

    // prefill statistics, per layer: sums over rows of the normalised squares (see kernels/stats.h)
    bool stats_on = false;
    bool stats_skip_first = false;     // skip row 0 of the first ubatch (the BOS token)
    int64_t stats_first_rows = 0;      // rows of that first ubatch
    std::vector<std::vector<float>> act_sum, imp_sum;
    std::vector<int64_t> stats_rows;

    // run the sparse kernels even for masks that keep every neuron (tests of the kernels)
    bool force_sparse_kernels = false;
    // gather Q4_K / Q4_0 rows with ggml's own dot product even where a faster path exists (tests)
    bool force_ggml_dot = false;

    // counters, read by tests to prove which path ran
    std::atomic<uint64_t> n_sparse_ops{0};
    std::atomic<uint64_t> n_dense_graphs{0};
    // wall time spent computing the FFN splits (the graphs llama.cpp hands our backend), so a
    // benchmark can split a token's time into FFN and the rest
    std::atomic<uint64_t> ffn_compute_ns{0};

    // A context is created (and attached to its llama_context) before the model's FFN table
    // exists; bind() gives it the table. Unbound contexts compute dense.
    void bind(std::shared_ptr<ffn_model> m);

    void mask_set(int il, const int32_t * idx, int64_t k);  // idx must be ascending, in range
    void masks_clear();
    void stats_begin(bool skip_first, int64_t first_rows);
    void stats_end() { stats_on = false; }
    void stats_reset();
};

}  // namespace glass
