// ffn_layout: building the neuron-major copy of ffn_down (packed at the original bit width, or
// int8 for the other types).
#include "ffn_layout.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <new>
#include <thread>

namespace glass {

void * huge_page_alloc(size_t n) {
    constexpr size_t HUGE_PAGE = 2u << 20;
    const bool huge = n >= HUGE_PAGE;  // smaller buffers fit no huge page: cache-line aligned
    void * p = nullptr;
    if (posix_memalign(&p, huge ? HUGE_PAGE : 64, n > 0 ? n : 1) != 0) {
        return nullptr;
    }
#ifdef MADV_HUGEPAGE
    // only whole huge pages: a huge page over the tail would be memory the buffer does not use
    if (huge) {
        madvise(p, n / HUGE_PAGE * HUGE_PAGE, MADV_HUGEPAGE);  // a hint: without THP, 4 KB pages
    }
#endif
    return p;
}

void huge_bytes::assign(size_t n) {
    p_.reset();
    n_ = 0;
    if (n == 0) {
        return;
    }
    p_.reset((uint8_t *) huge_page_alloc(n));
    if (!p_) {
        throw std::bad_alloc();
    }
    n_ = n;
    memset(p_.get(), 0, n);
}

// ---------------------------------------------------------------------------------------------
// packed: the original blocks' codes and scales, decoded one block at a time
// ---------------------------------------------------------------------------------------------

bool down_packable(ggml_type type, int64_t n_ff, int64_t n_embd) {
    if (n_embd % PK_BLOCK != 0 || n_embd <= 0) {
        return false;
    }
    switch (type) {
        case GGML_TYPE_Q4_0:
        case GGML_TYPE_Q8_0:
        case GGML_TYPE_Q4_K:
        case GGML_TYPE_Q6_K:
            return n_ff % ggml_blck_size(type) == 0;
        default:
            return false;
    }
}

// ||W_down[:, j]|| from the per-thread sums of squares of each neuron's column.
static std::vector<float> col_norms(const std::vector<std::vector<double>> & sumsq, int64_t n_ff) {
    std::vector<float> out(n_ff);
    for (int64_t j = 0; j < n_ff; ++j) {
        double s = 0.0;
        for (const auto & part : sumsq) {
            s += part[j];
        }
        out[j] = (float) std::sqrt(s);
    }
    return out;
}

// One block of the original row, as the packed layout stores it: codes (value v of the block ->
// codes[v]), the fp16 scales of the block (da, db: raw bits) and the integer sub-scale of each
// group of the block (sa, sb). Byte layouts as ggml defines them.
struct block_parts {
    int codes[256];
    uint16_t da = 0, db = 0;
    int sa[16] = {}, sb[16] = {};
};

static uint16_t u16_at(const uint8_t * p) {
    uint16_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static void block_decode(ggml_type type, const uint8_t * blk, block_parts & o) {
    switch (type) {
        case GGML_TYPE_Q4_0:  // d, 16 bytes: value t low nibble, value t + 16 high nibble
            o.da = u16_at(blk);
            for (int t = 0; t < 16; ++t) {
                o.codes[t] = blk[2 + t] & 0xf;
                o.codes[t + 16] = blk[2 + t] >> 4;
            }
            break;
        case GGML_TYPE_Q8_0:  // d, 32 signed bytes
            o.da = u16_at(blk);
            for (int t = 0; t < 32; ++t) {
                o.codes[t] = (int8_t) blk[2 + t];
            }
            break;
        case GGML_TYPE_Q4_K: {  // d, dmin, 12 bytes of 6-bit scales/mins for 8 groups, 128 bytes
            o.da = u16_at(blk);
            o.db = u16_at(blk + 2);
            const uint8_t * sc = blk + 4;
            const uint8_t * qs = blk + 16;
            for (int g = 0; g < 8; ++g) {
                if (g < 4) {
                    o.sa[g] = sc[g] & 63;
                    o.sb[g] = sc[g + 4] & 63;
                } else {
                    o.sa[g] = (sc[g + 4] & 0xf) | ((sc[g - 4] >> 6) << 4);
                    o.sb[g] = (sc[g + 4] >> 4) | ((sc[g] >> 6) << 4);
                }
            }
            for (int pair = 0; pair < 4; ++pair) {  // 32 bytes: group 2p low nibbles, 2p+1 high
                for (int l = 0; l < 32; ++l) {
                    o.codes[64 * pair + l] = qs[32 * pair + l] & 0xf;
                    o.codes[64 * pair + 32 + l] = qs[32 * pair + l] >> 4;
                }
            }
            break;
        }
        case GGML_TYPE_Q6_K: {  // 128 bytes low 4 bits, 64 bytes high 2 bits, 16 int8 scales, d
            const uint8_t * ql = blk;
            const uint8_t * qh = blk + 128;
            o.da = u16_at(blk + 208);
            for (int g = 0; g < 16; ++g) {
                o.sa[g] = (int8_t) blk[192 + g];
            }
            for (int half = 0; half < 2; ++half) {
                const uint8_t * l4 = ql + 64 * half;
                const uint8_t * h2 = qh + 32 * half;
                int * c = o.codes + 128 * half;
                for (int l = 0; l < 32; ++l) {
                    c[l]      = (l4[l] & 0xf)      | (((h2[l] >> 0) & 3) << 4);
                    c[l + 32] = (l4[l + 32] & 0xf) | (((h2[l] >> 2) & 3) << 4);
                    c[l + 64] = (l4[l] >> 4)       | (((h2[l] >> 4) & 3) << 4);
                    c[l + 96] = (l4[l + 32] >> 4)  | (((h2[l] >> 6) & 3) << 4);
                }
            }
            break;
        }
        default:
            break;
    }
}

static void packed_format(ggml_type type, down_packed_data & pk) {
    const bool k_quant = type == GGML_TYPE_Q4_K || type == GGML_TYPE_Q6_K;
    pk.code = type == GGML_TYPE_Q8_0 ? pk_codes::s8 : type == GGML_TYPE_Q6_K ? pk_codes::u6 : pk_codes::u4;
    pk.zero = type == GGML_TYPE_Q4_0 ? 8 : type == GGML_TYPE_Q6_K ? 32 : 0;
    pk.group = type == GGML_TYPE_Q6_K ? 16 : 32;
    pk.super = k_quant ? 256 : 32;
}

// Writes code c of neuron j at output i into the neuron's row.
static void code_put(down_packed_data & pk, size_t row_bytes, int64_t j, int64_t i, int c) {
    const int bb = pk_block_bytes(pk.code);
    uint8_t * q = pk.codes.data() + j * row_bytes + (i / PK_BLOCK) * bb;
    const int t = (int) (i % PK_BLOCK);
    if (pk.code == pk_codes::s8) {
        q[t] = (uint8_t) (int8_t) c;
        return;
    }
    q[t % 16] |= (uint8_t) ((c & 0xf) << (t < 16 ? 0 : 4));
    if (pk.code == pk_codes::u6) {
        q[16 + (t & 7)] |= (uint8_t) (((c >> 4) & 3) << (2 * (t >> 3)));
    }
}

// Builds the packed layout; false when a value it would compute differs from ggml's own
// dequantization (a block format this code does not know), and the caller falls back to int8.
static bool build_packed(down_layout & out, const ggml_tensor * down, int n_threads) {
    const ggml_type type = down->type;
    const int64_t n_ff = down->ne[0], n_embd = down->ne[1];
    const int64_t bs = ggml_blck_size(type);
    const size_t bsz = ggml_type_size(type);
    down_packed_data & pk = out.pk;
    packed_format(type, pk);
    const bool has_sa = pk.super != pk.group;
    const bool has_b = type == GGML_TYPE_Q4_K;
    const int grp_per_blk = (int) (bs / pk.group);
    const size_t row_bytes = (size_t) out.n_blk * pk_block_bytes(pk.code);
    pk.codes.assign(row_bytes * n_ff);
    pk.da.assign((size_t) (n_ff / pk.super) * n_embd, 0);
    if (has_sa) {
        pk.sa.assign((size_t) (n_ff / pk.group) * n_embd, 0);
    }
    if (has_b) {
        pk.db.assign((size_t) (n_ff / pk.super) * n_embd, 0);
        pk.sb.assign((size_t) (n_ff / pk.group) * n_embd, 0);
    }
    const ggml_type_traits * tr = ggml_get_type_traits(type);
    n_threads = (int) std::max<int64_t>(1, std::min<int64_t>(n_threads, out.n_blk));
    std::vector<std::vector<double>> sumsq(n_threads, std::vector<double>(n_ff, 0.0));
    std::atomic<bool> ok{true};
    std::vector<std::thread> workers;
    for (int ith = 0; ith < n_threads; ++ith) {
        workers.emplace_back([&, ith] {
            std::vector<float> ref(n_ff);
            block_parts bp;
            for (int64_t blk = ith; blk < out.n_blk && ok; blk += n_threads) {  // 32 outputs each
                for (int64_t i = blk * PK_BLOCK; i < (blk + 1) * PK_BLOCK; ++i) {
                    const uint8_t * row = (const uint8_t *) down->data + i * down->nb[1];
                    tr->to_float(row, ref.data(), n_ff);
                    for (int64_t ob = 0; ob < n_ff / bs; ++ob) {
                        block_decode(type, row + ob * bsz, bp);
                        pk.da[ob * n_embd + i] = bp.da;  // ob = j / super: one block per super
                        if (has_b) {
                            pk.db[ob * n_embd + i] = bp.db;
                        }
                        const float da = ggml_fp16_to_fp32(bp.da), db = ggml_fp16_to_fp32(bp.db);
                        for (int gb = 0; gb < grp_per_blk; ++gb) {
                            const int64_t g = ob * grp_per_blk + gb;
                            if (has_sa) {
                                pk.sa[g * n_embd + i] = (int8_t) bp.sa[gb];
                            }
                            if (has_b) {
                                pk.sb[g * n_embd + i] = (int8_t) bp.sb[gb];
                            }
                            // the kernels' arithmetic: must give ggml's value exactly
                            const float a = da * (has_sa ? (float) bp.sa[gb] : 1.0f);
                            const float b = has_b ? db * (float) bp.sb[gb] : 0.0f;
                            for (int v = gb * pk.group; v < (gb + 1) * pk.group; ++v) {
                                const int64_t j = ob * bs + v;
                                code_put(pk, row_bytes, j, i, bp.codes[v]);
                                const float w = a * (float) (bp.codes[v] - pk.zero) - b;
                                const float r = ref[j];  // FMA contraction may differ by an ulp
                                const float mag = std::fabs(a * (float) (bp.codes[v] - pk.zero)) + std::fabs(b);
                                if (!(std::fabs(w - r) <= 1e-6f * mag) && !(std::isnan(r) && std::isnan(w))) {
                                    ok = false;
                                }
                                sumsq[ith][j] += (double) r * r;
                            }
                        }
                    }
                }
            }
        });
    }
    for (auto & w : workers) {
        w.join();
    }
    if (!ok) {
        out.pk = down_packed_data();
        return false;
    }
    out.col_norm = col_norms(sumsq, n_ff);
    out.packed = true;
    return true;
}

// ---------------------------------------------------------------------------------------------
// int8: requantized in blocks of 32 outputs
// ---------------------------------------------------------------------------------------------

// Transposes and quantizes output rows [i0, i0 + 32) (one int8 block of every neuron).
// rows(i, buf) must fill buf with the n_ff values of output row i.
static void quantize_block(down_layout & out, int64_t blk, std::vector<float> & rows_buf,
                           const std::function<void(int64_t, float *)> & rows, std::vector<double> & sumsq) {
    const int64_t n_ff = out.n_ff;
    const int64_t i0 = blk * NM_BLOCK;
    const int64_t n_valid = std::min<int64_t>(NM_BLOCK, out.n_embd - i0);
    rows_buf.assign((size_t) NM_BLOCK * n_ff, 0.0f);  // rows past n_embd stay zero (padding)
    for (int64_t r = 0; r < n_valid; ++r) {
        rows(i0 + r, rows_buf.data() + r * n_ff);
    }
    for (int64_t j = 0; j < n_ff; ++j) {
        float amax = 0.0f;
        for (int r = 0; r < NM_BLOCK; ++r) {
            const float v = rows_buf[r * n_ff + j];
            amax = std::max(amax, std::fabs(v));
            sumsq[j] += (double) v * v;
        }
        const float dq = amax / 127.0f;
        const float inv = dq > 0.0f ? 1.0f / dq : 0.0f;
        int8_t * q = out.q.data() + (j * out.n_blk + blk) * NM_BLOCK;
        for (int r = 0; r < NM_BLOCK; ++r) {
            q[r] = (int8_t) std::lrintf(rows_buf[r * n_ff + j] * inv);
        }
        out.d[j * out.n_blk + blk] = dq;
    }
}

static void build(down_layout & out, int64_t n_ff, int64_t n_embd, int n_threads,
                  const std::function<void(int64_t, float *)> & rows) {
    out.n_ff = n_ff;
    out.n_embd = n_embd;
    out.n_blk = (n_embd + NM_BLOCK - 1) / NM_BLOCK;
    out.q.assign((size_t) n_ff * out.n_blk * NM_BLOCK, 0);
    out.d.assign((size_t) n_ff * out.n_blk, 0.0f);
    n_threads = (int) std::max<int64_t>(1, std::min<int64_t>(n_threads, out.n_blk));
    std::vector<std::vector<double>> sumsq(n_threads, std::vector<double>(n_ff, 0.0));
    std::vector<std::thread> workers;
    for (int ith = 0; ith < n_threads; ++ith) {
        workers.emplace_back([&, ith] {
            std::vector<float> buf;
            for (int64_t blk = ith; blk < out.n_blk; blk += n_threads) {
                quantize_block(out, blk, buf, rows, sumsq[ith]);
            }
        });
    }
    for (auto & w : workers) {
        w.join();
    }
    out.col_norm = col_norms(sumsq, n_ff);
}

void down_layout_build(down_layout & out, const ggml_tensor * down, int n_threads, bool allow_packed) {
    out = down_layout();
    if (allow_packed && down_packable(down->type, down->ne[0], down->ne[1])) {
        out.n_ff = down->ne[0];
        out.n_embd = down->ne[1];
        out.n_blk = out.n_embd / PK_BLOCK;
        if (build_packed(out, down, n_threads)) {
            return;
        }
        out = down_layout();
    }
    const ggml_type_traits * tr = ggml_get_type_traits(down->type);
    const char * base = (const char *) down->data;
    const int64_t n_ff = down->ne[0];
    build(out, n_ff, down->ne[1], n_threads, [&](int64_t i, float * dst) {
        const char * row = base + i * down->nb[1];
        if (down->type == GGML_TYPE_F32) {
            std::copy((const float *) row, (const float *) row + n_ff, dst);
        } else {
            tr->to_float(row, dst, n_ff);
        }
    });
}

void down_layout_build_f32(down_layout & out, const float * w, int64_t n_ff, int64_t n_embd) {
    build(out, n_ff, n_embd, 1, [&](int64_t i, float * dst) {
        std::copy(w + i * n_ff, w + (i + 1) * n_ff, dst);
    });
}

}  // namespace glass
