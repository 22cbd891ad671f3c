// ffn_layout: the weight layouts the sparse path reads, behind one small interface.
//
// up/gate are read in place (their rows are neurons). ffn_down's neurons are its columns, so a
// neuron-major copy of it is built once per model, plus each neuron's column norm ||W_down[:, j]||
// for the impact statistic. Reading a selected neuron's row reads only that neuron's bytes.
//   packed  Q4_0, Q4_K, Q6_K, Q8_0 (the types of Q4_0 / Q4_K_M / Q8_0 models): the original codes
//           and scales re-laid out (kernels/down_packed.h), as many bytes as the original
//   int8    every other type: int8 rows with one float scale per 32 values (~1.1 bytes/weight)
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "ggml.h"
#include "kernels/down_axpy.h"
#include "kernels/down_packed.h"

namespace glass {

// n bytes (free() them), 64-byte aligned; from 2 MB on, on transparent huge pages where the
// system allows it (THP "madvise" mode), whole 2 MB pages only. Null when out of memory. The
// sparse kernels jump from one scattered neuron row to the next, and with 4 KB pages each jump
// is a TLB miss; a layer's 2 MB pages fit the TLB.
void * huge_page_alloc(size_t n);

// Zero-filled bytes from huge_page_alloc.
class huge_bytes {
public:
    void assign(size_t n);
    uint8_t * data() { return p_.get(); }
    const uint8_t * data() const { return p_.get(); }
    size_t size() const { return n_; }

private:
    struct release {
        void operator()(uint8_t * p) const { std::free(p); }
    };
    std::unique_ptr<uint8_t, release> p_;
    size_t n_ = 0;
};

// The packed layout's data (see kernels/down_packed.h).
struct down_packed_data {
    pk_codes code = pk_codes::u4;
    int zero = 0;
    int group = 32;
    int super = 32;
    huge_bytes            codes;   // [n_ff][n_blk * pk_block_bytes(code)]
    std::vector<uint16_t> da, db;  // fp16 [n_ff / super][n_embd]; db empty: no offset
    std::vector<int8_t>   sa, sb;  // [n_ff / group][n_embd]; empty: 1 (sa) / no offset (sb)
};

struct down_layout {
    int64_t n_ff   = 0;          // neurons
    int64_t n_embd = 0;          // outputs
    int64_t n_blk  = 0;          // ceil(n_embd / 32)
    bool packed = false;         // packed (below) or int8 (q, d)
    down_packed_data pk;
    std::vector<int8_t> q;       // int8: [n_ff][n_blk * 32]
    std::vector<float>  d;       // int8: [n_ff][n_blk]
    std::vector<float>  col_norm;  // [n_ff], from the original (dequantized) weights

    nm_matrix_view view() const { return {q.data(), d.data(), n_ff, n_blk}; }
    packed_view pview() const {
        return {pk.codes.data(), pk.da.data(), pk.sa.empty() ? nullptr : pk.sa.data(),
                pk.db.empty() ? nullptr : pk.db.data(), pk.sb.empty() ? nullptr : pk.sb.data(),
                pk.code, pk.zero, pk.group, pk.super, n_ff, n_embd, n_blk};
    }
    size_t bytes() const {
        return q.size() + d.size() * sizeof(float) + col_norm.size() * sizeof(float) + pk.codes.size() +
               (pk.da.size() + pk.db.size()) * sizeof(uint16_t) + pk.sa.size() + pk.sb.size();
    }
};

// Can a weight of this type and shape use the packed layout?
bool down_packable(ggml_type type, int64_t n_ff, int64_t n_embd);

// Builds the neuron-major copy of a ggml ffn_down weight (ne0 = n_ff, ne1 = n_embd, any type
// ggml can dequantize), with n_threads threads: packed when down_packable and allow_packed, else
// int8.
void down_layout_build(down_layout & out, const ggml_tensor * down, int n_threads, bool allow_packed = true);

// The same from F32 data laid out like ggml's: n_embd rows of n_ff values (used by tests).
void down_layout_build_f32(down_layout & out, const float * w, int64_t n_ff, int64_t n_embd);

}  // namespace glass
