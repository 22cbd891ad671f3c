// plugin: registration of the GLASS backend device, and the hand-offs between a load / a context
// creation in llama.cpp and the Python objects that own them.
#pragma once

#include <memory>
#include <vector>

#include "ggml.h"
#include "masks.h"

namespace glass {

// Registers the device with the ggml that llama.cpp uses (idempotent). False when the device is
// not visible in ggml's device list afterwards (a second copy of libggml was linked).
bool plugin_register();

// While on, models being loaded keep every matmul weight in the plug-in's plain-layout buffer, so
// llama.cpp does not repack any of them for the CPU (like llama.cpp's use_extra_bufts=false).
void plugin_set_claim_all_matmuls(bool on);

// While off, the device supports no op, so models loaded meanwhile put no weight in its buffer and
// their contexts send it nothing: exactly stock llama.cpp (benchmarks load their reference this way).
void plugin_set_enabled(bool on);

// While on, models being loaded keep their FFN weights where stock llama.cpp puts them (repacked
// for the CPU where llama.cpp repacks: its fast prefill and dense kernels stay in use); the device
// still takes their matmuls at run time, and the sparse kernels read the weights' plain bytes
// from the model file's mapping (ffn_layer::plain).
void plugin_set_stock_placement(bool on);

// Forget the FFN weights seen so far; call right before loading a model.
void plugin_weights_begin();

// The FFN weights of the model loaded since plugin_weights_begin(): placed in the plug-in's
// buffers, or (stock placement) met in the graphs llama.cpp reserves for the new context.
std::vector<ggml_tensor *> plugin_weights_take();

// FFN weights of live models (by ffn_model), whose matmuls the device takes wherever they live.
void plugin_known_add(const std::vector<ggml_tensor *> & weights);
void plugin_known_remove(const std::vector<ggml_tensor *> & weights);

// The next backend llama.cpp creates (i.e. the next llama_context) gets this context.
void plugin_context_expect(std::shared_ptr<glass_context> g);

// After creating the llama_context: did it take the expected glass context?
bool plugin_context_attached();

}  // namespace glass

namespace glass {

// GGML_BACKEND_API_VERSION of the ggml headers this plug-in was compiled against.
int plugin_backend_api_version();

}  // namespace glass
