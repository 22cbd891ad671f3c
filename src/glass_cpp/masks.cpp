// masks: install / clear masks, start / stop statistics.
#include "masks.h"

namespace glass {

void glass_context::bind(std::shared_ptr<ffn_model> m) {
    model = std::move(m);
    const size_t n_layer = model->layers.size();
    masks.resize(n_layer);
    masks_fused.resize(n_layer);
    stats_reset();
}

void glass_context::mask_set(int il, const int32_t * idx, int64_t k) {
    const ffn_layer & L = model->layers[il];
    masks[il].assign(idx, idx + k);
    masks_fused[il].clear();
    if (L.gate_in_up) {
        masks_fused[il] = masks[il];
        for (int64_t i = 0; i < k; ++i) {
            masks_fused[il].push_back(idx[i] + (int32_t) L.n_ff);
        }
    }
    any_mask = false;
    for (const auto & m : masks) {
        any_mask = any_mask || !m.empty();
    }
}

void glass_context::masks_clear() {
    for (auto & m : masks) {
        m.clear();
    }
    for (auto & m : masks_fused) {
        m.clear();
    }
    any_mask = false;
}

void glass_context::stats_reset() {
    const size_t n_layer = model->layers.size();
    act_sum.assign(n_layer, {});
    imp_sum.assign(n_layer, {});
    for (size_t il = 0; il < n_layer; ++il) {
        act_sum[il].assign(model->layers[il].n_ff, 0.0f);
        imp_sum[il].assign(model->layers[il].n_ff, 0.0f);
    }
    stats_rows.assign(n_layer, 0);
}

void glass_context::stats_begin(bool skip_first, int64_t first_rows) {
    stats_reset();
    stats_skip_first = skip_first;
    stats_first_rows = first_rows;
    stats_on = true;
}

}  // namespace glass
