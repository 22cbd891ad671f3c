// ffn_weights: name matching and the per-model FFN table.
#include "ffn_weights.h"

#include <cstdio>
#include <cstring>

#include <sys/mman.h>
#include <unistd.h>

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
        L.plain[role] = t->buffer && ggml_backend_buffer_is_host(t->buffer) ? t->data : nullptr;
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

std::vector<ggml_tensor *> ffn_model_weights(const ffn_model & model) {
    std::vector<ggml_tensor *> out;
    for (const auto & kv : model.roles) {
        out.push_back((ggml_tensor *) kv.first);
    }
    return out;
}

std::vector<const ggml_tensor *> ffn_model_missing_plain(const ffn_model & model) {
    std::vector<const ggml_tensor *> out;
    for (const auto & kv : model.roles) {
        if (model.layers[kv.second.first].plain[kv.second.second] == nullptr) {
            out.push_back(kv.first);
        }
    }
    return out;
}

// Drops the whole pages inside [p, p + n) of a read-only file mapping from this process (they are
// read again from the page cache if ever touched).
static void release_pages(const void * p, size_t n) {
    const uintptr_t page = (uintptr_t) sysconf(_SC_PAGESIZE);
    const uintptr_t lo = ((uintptr_t) p + page - 1) / page * page;
    const uintptr_t hi = ((uintptr_t) p + n) / page * page;
    if (hi > lo) {
        madvise((void *) lo, hi - lo, MADV_DONTNEED);
    }
}

std::string ffn_model_prepare(ffn_model & model, int n_threads) {
    if (model.prepared) {
        return "";
    }
    const std::vector<const ggml_tensor *> missing = ffn_model_missing_plain(model);
    if (!missing.empty()) {
        return std::string("no plain bytes for ") + missing.front()->name;
    }
    for (ffn_layer & L : model.layers) {
        for (ffn_role role : {FFN_UP, FFN_GATE}) {
            const ggml_tensor * t = role == FFN_UP ? L.up : L.gate;
            if (t && L.plain_releasable[role]) {
                // scattered rows: 2 MB pages spare a TLB miss per gathered row
                L.owned_plain[role].assign(ggml_nbytes(t));
                memcpy(L.owned_plain[role].data(), L.plain[role], ggml_nbytes(t));
                release_pages(L.plain[role], ggml_nbytes(t));
                L.plain[role] = L.owned_plain[role].data();
                L.plain_releasable[role] = false;
            }
        }
        if (L.down) {
            ggml_tensor plain_down = *L.down;  // the same shape, reading the plain bytes
            plain_down.data = (void *) L.plain[FFN_DOWN];
            down_layout_build(L.layout, &plain_down, n_threads);
            if (L.plain_releasable[FFN_DOWN]) {
                release_pages(L.plain[FFN_DOWN], ggml_nbytes(L.down));
            }
        }
    }
    model.prepared = true;
    return "";
}

}  // namespace glass
