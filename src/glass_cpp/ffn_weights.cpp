// ffn_weights: name matching and the per-model FFN table.
#include "ffn_weights.h"

#include <cstdio>
#include <cstring>

namespace glass {

bool ffn_name_parse(const char * name, int * layer, ffn_role * role) {
    int il = -1;
    int used = 0;
    if (sscanf(name, "blk.%d.ffn_%n", &il, &used) != 1 || used == 0 || il < 0) {
        return false;
    }
    const char * rest = name + used;
    if (strcmp(rest, "up.weight") == 0) {
        *role = FFN_UP;
    } else if (strcmp(rest, "gate.weight") == 0) {
        *role = FFN_GATE;
    } else if (strcmp(rest, "down.weight") == 0) {
        *role = FFN_DOWN;
    } else {
        return false;  // experts, shared experts, biases, norms
    }
    *layer = il;
    return true;
}

std::string ffn_model_build(ffn_model & model, const std::vector<ggml_tensor *> & weights) {
    model.layers.clear();
    model.roles.clear();
    for (ggml_tensor * t : weights) {
        int il;
        ffn_role role;
        if (!ffn_name_parse(t->name, &il, &role)) {
            continue;
        }
        if ((int) model.layers.size() <= il) {
            model.layers.resize(il + 1);
        }
        ffn_layer & L = model.layers[il];
        (role == FFN_UP ? L.up : role == FFN_GATE ? L.gate : L.down) = t;
        model.roles[t] = {il, role};
    }
    for (size_t il = 0; il < model.layers.size(); ++il) {
        ffn_layer & L = model.layers[il];
        if (!L.up && !L.gate && !L.down) {
            continue;
        }
        if (!L.up || !L.down) {
            return "layer " + std::to_string(il) + " has an FFN without both up and down weights";
        }
        L.n_ff   = L.down->ne[0];
        L.n_embd = L.down->ne[1];
        if (L.up->ne[0] != L.n_embd) {
            return "layer " + std::to_string(il) + ": ffn_up and ffn_down shapes disagree";
        }
        if (L.up->ne[1] == 2 * L.n_ff && !L.gate) {
            L.gate_in_up = true;
        } else if (L.up->ne[1] != L.n_ff) {
            return "layer " + std::to_string(il) + ": ffn_up has " + std::to_string(L.up->ne[1]) +
                   " rows, ffn_down has " + std::to_string(L.n_ff) + " columns";
        }
        if (L.gate && (L.gate->ne[0] != L.n_embd || L.gate->ne[1] != L.n_ff)) {
            return "layer " + std::to_string(il) + ": ffn_gate shape disagrees with ffn_up";
        }
    }
    return "";
}

void ffn_model_prepare(ffn_model & model, int n_threads) {
    if (model.prepared) {
        return;
    }
    for (ffn_layer & L : model.layers) {
        if (L.down) {
            down_layout_build(L.layout, L.down, n_threads);
        }
    }
    model.prepared = true;
}

}  // namespace glass
