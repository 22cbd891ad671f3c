// ffn_weights: which tensors are FFN weights, and the per-model table of them.
//
// The plug-in takes the matmuls of `blk.N.ffn_{up,gate,down}.weight` of the models it serves
// (dense FFNs of llama, mistral, qwen2/3, gemma2/3, phi3, gpt-style up+down FFNs, ...). MoE expert
// tensors (`ffn_*_exps`, `ffn_*_shexp`) have other names and stay with the CPU backend.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "ggml-backend.h"
#include "ggml.h"
#include "ffn_layout.h"

namespace glass {

enum ffn_role { FFN_UP = 0, FFN_GATE = 1, FFN_DOWN = 2 };

// Parses "blk.<layer>.ffn_<up|gate|down>.weight"; false for any other name.
bool ffn_name_parse(const char * name, int * layer, ffn_role * role);

struct ffn_layer {
    ggml_tensor * up   = nullptr;
    ggml_tensor * gate = nullptr;  // null for non-gated FFNs, and when gate rows live in `up`
    ggml_tensor * down = nullptr;
    int64_t n_embd = 0;
    int64_t n_ff   = 0;
    bool gate_in_up = false;       // phi3-style fused up: rows [0, n_ff) gate, [n_ff, 2 n_ff) up
    // each weight's bytes in ggml's plain layout, indexed by ffn_role: its data when it lives in a
    // host buffer; for a weight llama.cpp repacked, the model file's bytes (set by the loader)
    const void * plain[3] = {nullptr, nullptr, nullptr};
    // plain bytes that are file pages nothing but the sparse path reads (a weight llama.cpp
    // repacked): prepare() moves up/gate into huge-page memory (owned_plain) and builds down's
    // layout, releasing the file pages layer by layer, so memory never holds both
    bool plain_releasable[3] = {false, false, false};
    huge_bytes owned_plain[2];
    down_layout layout;            // sparse-friendly copy of `down` (built by ffn_model_prepare)
};

struct ffn_model {
    std::vector<ffn_layer> layers;  // indexed by layer id; a layer with no FFN has null tensors
    std::unordered_map<const ggml_tensor *, std::pair<int, ffn_role>> roles;
    bool prepared = false;
};

// Builds the table from the weight tensors placed in the plug-in's buffers during one load.
// Returns an error message, or "" when every layer has a consistent up/down pair.
std::string ffn_model_build(ffn_model & model, const std::vector<ggml_tensor *> & weights);

// Every weight of the table (for the device's list of weights it takes).
std::vector<ggml_tensor *> ffn_model_weights(const ffn_model & model);

// The weights whose plain bytes are not known yet (llama.cpp repacked them; the loader sets them).
std::vector<const ggml_tensor *> ffn_model_missing_plain(const ffn_model & model);

// Builds the down layouts (and column norms) of every layer, with n_threads threads. Returns an
// error message, or "" (every weight must have its plain bytes by then).
std::string ffn_model_prepare(ffn_model & model, int n_threads);

}  // namespace glass
