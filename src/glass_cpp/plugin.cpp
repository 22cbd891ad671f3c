// plugin: the ggml backend device "GLASS" that takes the FFN matmuls inside stock llama.cpp.
//
// llama.cpp puts every registered ACCEL device ahead of the CPU: it asks our device first where
// to place each weight, and adds one backend of ours to every new context. Two placements:
//   stock placement (GlassLlama's default): during the load we decline every weight, so llama.cpp
//     places the FFN weights as it always does (repacked for the CPU where it repacks); at run
//     time we take the matmuls of the FFN weights of live models wherever they live.
//   own buffer (no mmap, or repack=False): we answer yes for the FFN matmuls at load, so the FFN
//     weights live in our (host, plain-layout) buffer type.
// Either way the FFN ops of every graph (and the GLU between them) come to our graph_compute.
// There we rebuild the split as a CPU graph: ops with no mask stay exactly as they are (computed
// by an inner CPU backend, so dense results are ggml's own, repacked kernels included), and each
// masked matmul becomes a custom op running our sparse kernels on the weights' plain bytes, in
// the same CPU thread pool.
#include "plugin.h"

#include <sys/sysinfo.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <atomic>
#include <mutex>
#include <unordered_set>

#include "ggml-backend-impl.h"
#include "ggml-cpu.h"
#include "kernels/gather_matvec.h"
#include "kernels/gather_q4_0.h"
#include "kernels/gather_q4k.h"
#include "kernels/stats.h"

namespace glass {

// ---------------------------------------------------------------------------------------------
// process-wide state: weights seen during a load, the context waiting for its backend
// ---------------------------------------------------------------------------------------------

static std::mutex g_mutex;
static std::vector<ggml_tensor *> g_loaded_weights;
static std::shared_ptr<glass_context> g_pending_context;
static bool g_pending_attached = false;
static std::atomic<bool> g_claim_all_matmuls{false};  // loads with CPU repacking off (see plugin.h)
static std::atomic<bool> g_enabled{true};             // off: the device claims nothing (see plugin.h)
static std::atomic<bool> g_stock_placement{false};    // loads leave FFN weights where llama.cpp puts them
static bool g_recording = false;                      // between weights_begin and weights_take
static std::unordered_set<const ggml_tensor *> g_recorded;
static std::unordered_set<const ggml_tensor *> g_known;  // FFN weights of live models

extern ggml_backend_buffer_type g_buft;
extern ggml_backend_device g_device;

// ---------------------------------------------------------------------------------------------
// buffer: plain host memory (ours, or the model file's mmap); records FFN weights as they land
// ---------------------------------------------------------------------------------------------

struct buffer_ctx {
    void * base;
    bool owned;  // false: a view of llama.cpp's mmap of the model file
};

static void buffer_free(ggml_backend_buffer_t buf) {
    auto * ctx = (buffer_ctx *) buf->context;
    if (ctx->owned) {
        free(ctx->base);
    }
    delete ctx;
}

static void * buffer_get_base(ggml_backend_buffer_t buf) {
    return ((buffer_ctx *) buf->context)->base;
}

static ggml_status buffer_init_tensor(ggml_backend_buffer_t, ggml_tensor * t) {
    int il;
    ffn_role role;
    if (t->view_src == nullptr && ffn_name_parse(t->name, &il, &role)) {
        std::lock_guard<std::mutex> lock(g_mutex);
        if (g_recorded.insert(t).second) {
            g_loaded_weights.push_back(t);
        }
    }
    return GGML_STATUS_SUCCESS;
}

static void buffer_memset_tensor(ggml_backend_buffer_t, ggml_tensor * t, uint8_t value, size_t offset, size_t size) {
    memset((char *) t->data + offset, value, size);
}

static void buffer_set_tensor(ggml_backend_buffer_t, ggml_tensor * t, const void * data, size_t offset, size_t size) {
    memcpy((char *) t->data + offset, data, size);
}

static void buffer_get_tensor(ggml_backend_buffer_t, const ggml_tensor * t, void * data, size_t offset, size_t size) {
    memcpy(data, (const char *) t->data + offset, size);
}

static bool buffer_cpy_tensor(ggml_backend_buffer_t, const ggml_tensor * src, ggml_tensor * dst) {
    if (src->buffer && ggml_backend_buffer_is_host(src->buffer)) {
        memcpy(dst->data, src->data, ggml_nbytes(src));
        return true;
    }
    return false;
}

static void buffer_clear(ggml_backend_buffer_t buf, uint8_t value) {
    memset(buffer_get_base(buf), value, buf->size);
}

static const ggml_backend_buffer_i buffer_iface = {
    /* .free_buffer   = */ buffer_free,
    /* .get_base      = */ buffer_get_base,
    /* .init_tensor   = */ buffer_init_tensor,
    /* .memset_tensor = */ buffer_memset_tensor,
    /* .set_tensor    = */ buffer_set_tensor,
    /* .get_tensor    = */ buffer_get_tensor,
    /* .set_tensor_2d = */ nullptr,
    /* .get_tensor_2d = */ nullptr,
    /* .cpy_tensor    = */ buffer_cpy_tensor,
    /* .clear         = */ buffer_clear,
    /* .reset         = */ nullptr,
};

// ---------------------------------------------------------------------------------------------
// buffer type
// ---------------------------------------------------------------------------------------------

static constexpr size_t ALIGNMENT = 64;

static const char * buft_get_name(ggml_backend_buffer_type_t) { return "GLASS"; }

static ggml_backend_buffer_t buft_alloc_buffer(ggml_backend_buffer_type_t buft, size_t size) {
    // weights loaded without mmap: on huge pages, for the gathers of scattered rows (ffn_layout.h)
    void * base = huge_page_alloc(size);
    if (base == nullptr) {
        return nullptr;
    }
    return ggml_backend_buffer_init(buft, buffer_iface, new buffer_ctx{base, true}, size);
}

static size_t buft_get_alignment(ggml_backend_buffer_type_t) { return ALIGNMENT; }

static bool buft_is_host(ggml_backend_buffer_type_t) { return true; }

ggml_backend_buffer_type g_buft = {
    /* .iface = */ {
        /* .get_name       = */ buft_get_name,
        /* .alloc_buffer   = */ buft_alloc_buffer,
        /* .get_alignment  = */ buft_get_alignment,
        /* .get_max_size   = */ nullptr,
        /* .get_alloc_size = */ nullptr,
        /* .is_host        = */ buft_is_host,
    },
    /* .device  = */ &g_device,
    /* .context = */ nullptr,
};

// ---------------------------------------------------------------------------------------------
// sparse ops: each runs as a ggml custom op (ith of nth threads) in the inner CPU backend
// ---------------------------------------------------------------------------------------------

// The hand-written gathered dot product for a weight, where this CPU has one (kernels/gather_q4k.h,
// gather_q4_0.h): x is converted by ggml as usual, then regrouped for the kernel.
struct fast_gather {
    gather_rows_fn run = nullptr;                           // null: ggml's vec_dot (gather_matvec)
    void (*regroup_x)(const void * xq, void * xr, int64_t n) = nullptr;
    size_t x_row_bytes = 0;                                 // regrouped x, per token
};

static fast_gather fast_gather_for(const ggml_tensor * w, bool allowed) {
    fast_gather f;
    const int64_t n = w->ne[0];
    if (!allowed) {
        return f;
    }
    if (w->type == GGML_TYPE_Q4_K && n % Q4K_BLOCK == 0) {
        f.run = kernel_path_fast(gather_q4k_paths());
        f.regroup_x = q4k_regroup_x;
        f.x_row_bytes = (size_t) (n / Q4K_BLOCK) * Q8K_BLOCK_BYTES;
    } else if (w->type == GGML_TYPE_Q4_0 && n % Q4_0_GROUP == 0) {
        f.run = kernel_path_fast(gather_q4_0_paths());
        f.regroup_x = q4_0_regroup_x;
        f.x_row_bytes = q4_0_x_bytes(n);
    }
    return f.run ? f : fast_gather{};
}

struct op_job {
    glass_context * g = nullptr;
    const ffn_layer * layer = nullptr;
    int il = 0;
    const ggml_tensor * w = nullptr;  // the weight
    const void * w_plain = nullptr;   // its bytes in ggml's plain layout (see ffn_layer::plain)
    const ggml_tensor * x = nullptr;  // the activations (src1): [n_in, n_tok]
    ggml_tensor * out = nullptr;      // the original node: its data receives the result
    const int32_t * idx = nullptr;    // selected rows / neurons, ascending
    int64_t k = 0;
    row_dot rd = {};
    fast_gather fast;                 // a hand-written kernel for this weight, if any
    size_t x_stride = 0;              // bytes per token row of xq
    uint8_t * xq = nullptr;           // x converted for the dot product, one row per token
    float * inv_act = nullptr;        // per-token inverse norms (statistics)
    float * inv_imp = nullptr;
    int64_t t0 = 0;                   // first token row counted by the statistics
};

static const float * row_f32(const ggml_tensor * t, int64_t r) {
    return (const float *) ((const char *) t->data + r * t->nb[1]);
}

static float * row_f32(ggml_tensor * t, int64_t r) {
    return (float *) ((char *) t->data + r * t->nb[1]);
}

// up/gate, step 1: convert x for the dot products, and zero the output (unselected rows stay 0)
static void op_convert_x(ggml_tensor *, int ith, int nth, void * ud) {
    const op_job & j = *(const op_job *) ud;
    thread_local std::vector<uint8_t> ggml_x;
    for (int64_t t = ith; t < j.x->ne[1]; t += nth) {
        uint8_t * xq = j.xq + t * j.x_stride;
        if (j.fast.run) {  // ggml's conversion, then regrouped the way the fast kernel loads it
            ggml_x.resize(j.rd.x_row_bytes);
            row_dot_convert_x(j.rd, row_f32(j.x, t), ggml_x.data());
            j.fast.regroup_x(ggml_x.data(), xq, j.rd.n);
        } else {
            row_dot_convert_x(j.rd, row_f32(j.x, t), xq);
        }
        memset(row_f32(j.out, t), 0, j.out->ne[0] * sizeof(float));
    }
}

// up/gate, step 2: dot products of the selected rows only
static void op_gather(ggml_tensor *, int ith, int nth, void * ud) {
    const op_job & j = *(const op_job *) ud;
    const int64_t i0 = j.k * ith / nth;
    const int64_t i1 = j.k * (ith + 1) / nth;
    for (int64_t t = 0; t < j.x->ne[1]; ++t) {
        const uint8_t * xq = j.xq + t * j.x_stride;
        if (j.fast.run) {
            j.fast.run(j.w_plain, j.w->nb[1], j.idx + i0, i1 - i0, xq, j.rd.n, row_f32(j.out, t));
        } else {
            gather_matvec(j.rd, j.w_plain, j.w->nb[1], j.idx + i0, i1 - i0, xq, row_f32(j.out, t));
        }
    }
}

// down: each thread owns a range of output blocks and sums the selected neurons' rows into it
static void op_down(ggml_tensor *, int ith, int nth, void * ud) {
    const op_job & j = *(const op_job *) ud;
    const down_layout & lay = j.layer->layout;
    const int64_t b0 = lay.n_blk * ith / nth;
    const int64_t b1 = lay.n_blk * (ith + 1) / nth;
    if (b1 <= b0) {
        return;
    }
    const int64_t n_out = std::min<int64_t>(b1 * NM_BLOCK, lay.n_embd) - b0 * NM_BLOCK;
    if (lay.packed) {  // n_embd is a multiple of 32 here
        thread_local std::vector<float> acc;  // one scale group's weighted code sums
        acc.resize(n_out);
        for (int64_t t = 0; t < j.x->ne[1]; ++t) {
            float * y = row_f32(j.out, t) + b0 * NM_BLOCK;
            memset(y, 0, n_out * sizeof(float));
            down_packed_axpy(lay.pview(), j.idx, j.k, row_f32(j.x, t), y, b0, b1, acc.data());
        }
        return;
    }
    const bool whole = n_out == (b1 - b0) * NM_BLOCK;
    thread_local std::vector<float> tail;  // the last block when n_embd is not a multiple of 32
    for (int64_t t = 0; t < j.x->ne[1]; ++t) {
        float * y = row_f32(j.out, t) + b0 * NM_BLOCK;
        float * acc = y;
        if (!whole) {
            tail.assign((b1 - b0) * NM_BLOCK, 0.0f);
            acc = tail.data();
        } else {
            memset(acc, 0, n_out * sizeof(float));
        }
        down_axpy(lay.view(), j.idx, j.k, row_f32(j.x, t), acc, b0, b1);
        if (!whole) {
            memcpy(y, acc, n_out * sizeof(float));
        }
    }
}

// statistics, step 1: per-token norms (threads split the tokens)
static void op_stats_norms(ggml_tensor *, int ith, int nth, void * ud) {
    const op_job & j = *(const op_job *) ud;
    const int64_t n_tok = j.x->ne[1] - j.t0;
    const int64_t a = j.t0 + n_tok * ith / nth;
    const int64_t b = j.t0 + n_tok * (ith + 1) / nth;
    stats_token_norms((const float *) j.x->data, j.x->ne[0], j.x->nb[1] / sizeof(float), a, b,
                      j.layer->layout.col_norm.data(), j.inv_act, j.inv_imp);
}

// statistics, step 2: accumulate (threads split the neurons)
static void op_stats_accumulate(ggml_tensor *, int ith, int nth, void * ud) {
    const op_job & j = *(const op_job *) ud;
    const int64_t n_ff = j.x->ne[0];
    stats_accumulate((const float *) j.x->data, j.x->nb[1] / sizeof(float), j.t0, j.x->ne[1],
                     j.layer->layout.col_norm.data(), j.inv_act, j.inv_imp,
                     n_ff * ith / nth, n_ff * (ith + 1) / nth,
                     j.g->act_sum[j.il].data(), j.g->imp_sum[j.il].data());
}

// ---------------------------------------------------------------------------------------------
// backend: one per llama_context
// ---------------------------------------------------------------------------------------------

struct backend_ctx {
    ggml_backend_t cpu = nullptr;            // computes everything, dense ops unchanged
    std::shared_ptr<glass_context> g;        // null for contexts created by plain llama_cpp.Llama
    ggml_context * graph_ctx = nullptr;      // the rebuilt graph and its custom-op tensors
    size_t graph_ctx_nodes = 0;
    std::deque<op_job> jobs;                 // stable addresses: custom ops point at them
    std::vector<uint8_t> xq;
    std::vector<float> norms;
};

static const char * backend_get_name(ggml_backend_t) { return "GLASS"; }

static void backend_free(ggml_backend_t backend) {
    auto * bc = (backend_ctx *) backend->context;
    if (bc->graph_ctx) {
        ggml_free(bc->graph_ctx);
    }
    ggml_backend_free(bc->cpu);
    delete bc;
    delete backend;
}

// Is this matmul's output shaped so the sparse kernels can write it (2-D, F32, dense rows)?
static bool sparse_shapes_ok(const ggml_tensor * node) {
    const ggml_tensor * x = node->src[1];
    return x->type == GGML_TYPE_F32 && x->nb[0] == sizeof(float) && x->ne[2] == 1 && x->ne[3] == 1 &&
           node->type == GGML_TYPE_F32 && node->nb[0] == sizeof(float) && node->ne[2] == 1 && node->ne[3] == 1;
}

static void graph_ctx_reserve(backend_ctx * bc, size_t n_nodes) {
    if (bc->graph_ctx && bc->graph_ctx_nodes >= n_nodes) {
        ggml_reset(bc->graph_ctx);
        return;
    }
    if (bc->graph_ctx) {
        ggml_free(bc->graph_ctx);
    }
    ggml_init_params params = {
        /* .mem_size   = */ ggml_tensor_overhead() * n_nodes + ggml_graph_overhead_custom(n_nodes, false),
        /* .mem_buffer = */ nullptr,
        /* .no_alloc   = */ true,
    };
    bc->graph_ctx = ggml_init(params);
    bc->graph_ctx_nodes = n_nodes;
}

static ggml_tensor * add_custom(backend_ctx * bc, ggml_cgraph * graph, ggml_custom_op_t fun, op_job & job,
                                ggml_tensor * like, void * data) {
    ggml_tensor * args[2] = {(ggml_tensor *) job.x, (ggml_tensor *) job.w};
    ggml_tensor * t = ggml_custom_4d(bc->graph_ctx, GGML_TYPE_F32, like->ne[0], like->ne[1], 1, 1,
                                     args, job.w ? 2 : 1, fun, GGML_N_TASKS_MAX, &job);
    t->data = data;
    t->flags |= GGML_TENSOR_FLAG_COMPUTE;  // the CPU backend skips nodes without it
    ggml_graph_add_node(graph, t);
    return t;
}

// Sizes the scratch buffers for the largest masked op of this split, before any job points at them.
static void scratch_reserve(backend_ctx * bc, ggml_cgraph * cgraph) {
    size_t xq_bytes = 0, n_tok_max = 0;
    const ffn_model & model = *bc->g->model;
    for (int i = 0; i < ggml_graph_n_nodes(cgraph); ++i) {
        const ggml_tensor * node = ggml_graph_node(cgraph, i);
        if (node->op != GGML_OP_MUL_MAT || model.roles.count(node->src[0]) == 0) {
            continue;
        }
        const ggml_tensor * w = node->src[0];
        const row_dot rd = row_dot_for(w->type, w->ne[0]);
        const size_t row_bytes = std::max(rd.x_row_bytes, fast_gather_for(w, true).x_row_bytes);
        xq_bytes = std::max(xq_bytes, row_bytes * (size_t) node->src[1]->ne[1]);
        n_tok_max = std::max(n_tok_max, (size_t) node->src[1]->ne[1]);
    }
    if (bc->xq.size() < xq_bytes) {
        bc->xq.resize(xq_bytes);
    }
    if (bc->norms.size() < 2 * n_tok_max) {
        bc->norms.resize(2 * n_tok_max);
    }
}

// One FFN split: dense as it is, or rebuilt with the masked matmuls as sparse custom ops.
static ggml_status graph_compute_split(backend_ctx * bc, glass_context * g, ggml_cgraph * cgraph) {
    if (!g->model || (!g->any_mask && !g->stats_on)) {
        g->n_dense_graphs++;
        return ggml_backend_graph_compute(bc->cpu, cgraph);
    }

    const int n_nodes = ggml_graph_n_nodes(cgraph);
    graph_ctx_reserve(bc, 4 * (size_t) n_nodes + 16);
    ggml_cgraph * graph = ggml_new_graph_custom(bc->graph_ctx, 4 * (size_t) n_nodes + 16, false);
    bc->jobs.clear();
    scratch_reserve(bc, cgraph);
    const ffn_model & model = *g->model;

    for (int i = 0; i < n_nodes; ++i) {
        ggml_tensor * node = ggml_graph_node(cgraph, i);
        const auto it = node->op == GGML_OP_MUL_MAT ? model.roles.find(node->src[0]) : model.roles.end();
        if (it == model.roles.end() || !sparse_shapes_ok(node)) {
            ggml_graph_add_node(graph, node);
            continue;
        }
        const int il = it->second.first;
        const ffn_role role = it->second.second;
        const ffn_layer & L = model.layers[il];

        op_job base;
        base.g = g;
        base.layer = &L;
        base.il = il;
        base.w = node->src[0];
        base.x = node->src[1];
        base.out = node;

        if (role == FFN_DOWN && g->stats_on) {
            // the input of ffn_down is h = act(gate x) * (up x): collect its statistics first
            op_job & st = bc->jobs.emplace_back(base);
            st.w = nullptr;
            const int64_t n_tok = node->src[1]->ne[1];
            st.t0 = (g->stats_skip_first && g->stats_rows[il] == 0 && n_tok == g->stats_first_rows && n_tok > 1) ? 1 : 0;
            st.inv_act = bc->norms.data();
            st.inv_imp = bc->norms.data() + n_tok;
            g->stats_rows[il] += n_tok - st.t0;
            add_custom(bc, graph, op_stats_norms, st, node, bc->norms.data());
            add_custom(bc, graph, op_stats_accumulate, st, node, bc->norms.data());
        }

        const std::vector<int32_t> & mask = (role == FFN_UP && L.gate_in_up) ? g->masks_fused[il] : g->masks[il];
        // a mask that keeps every neuron skips nothing: ggml's dense kernel is exact and faster
        const bool keeps_all = (int64_t) g->masks[il].size() == L.n_ff && !g->force_sparse_kernels;
        if (mask.empty() || keeps_all) {
            ggml_graph_add_node(graph, node);
            continue;
        }
        op_job & job = bc->jobs.emplace_back(base);
        job.w_plain = L.plain[role];
        job.idx = mask.data();
        job.k = (int64_t) mask.size();
        if (role == FFN_DOWN) {
            add_custom(bc, graph, op_down, job, node, node->data);
        } else {
            job.rd = row_dot_for(job.w->type, job.w->ne[0]);
            job.fast = fast_gather_for(job.w, !g->force_ggml_dot);
            job.x_stride = job.fast.run ? job.fast.x_row_bytes : job.rd.x_row_bytes;
            job.xq = bc->xq.data();
            add_custom(bc, graph, op_convert_x, job, node, bc->xq.data());
            add_custom(bc, graph, op_gather, job, node, node->data);
        }
        g->n_sparse_ops++;
    }
    return ggml_backend_graph_compute(bc->cpu, graph);
}

static ggml_status backend_graph_compute(ggml_backend_t backend, ggml_cgraph * cgraph) {
    auto * bc = (backend_ctx *) backend->context;
    glass_context * g = bc->g.get();
    if (g == nullptr) {
        return ggml_backend_graph_compute(bc->cpu, cgraph);
    }
    const auto t0 = std::chrono::steady_clock::now();
    const ggml_status status = graph_compute_split(bc, g, cgraph);
    g->ffn_compute_ns += (uint64_t) std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::steady_clock::now() - t0).count();
    return status;
}

static ggml_guid_t backend_guid() {
    static ggml_guid guid = {0x67, 0x6c, 0x61, 0x73, 0x73, 0x2d, 0x65, 0x64, 0x67, 0x65, 0x2d, 0x66, 0x66, 0x6e, 0x00, 0x01};
    return &guid;
}

static const ggml_backend_i backend_iface = {
    /* .get_name            = */ backend_get_name,
    /* .free                = */ backend_free,
    /* .set_tensor_async    = */ nullptr,
    /* .get_tensor_async    = */ nullptr,
    /* .set_tensor_2d_async = */ nullptr,
    /* .get_tensor_2d_async = */ nullptr,
    /* .cpy_tensor_async    = */ nullptr,
    /* .synchronize         = */ nullptr,
    /* .graph_plan_create   = */ nullptr,
    /* .graph_plan_free     = */ nullptr,
    /* .graph_plan_update   = */ nullptr,
    /* .graph_plan_compute  = */ nullptr,
    /* .graph_compute       = */ backend_graph_compute,
    /* .event_record        = */ nullptr,
    /* .event_wait          = */ nullptr,
    /* .graph_optimize      = */ nullptr,
};

static void backend_set_n_threads(ggml_backend_t backend, int n_threads) {
    auto * bc = (backend_ctx *) backend->context;
    ggml_backend_cpu_set_n_threads(bc->cpu, n_threads);
}

// ---------------------------------------------------------------------------------------------
// device
// ---------------------------------------------------------------------------------------------

static const char * dev_get_name(ggml_backend_dev_t) { return "GLASS"; }
static const char * dev_get_description(ggml_backend_dev_t) { return "glass-edge sparse FFN (CPU)"; }

static void dev_get_memory(ggml_backend_dev_t, size_t * free_mem, size_t * total) {
    struct sysinfo si = {};
    sysinfo(&si);
    *total = (size_t) si.totalram * si.mem_unit;
    *free_mem = (size_t) si.freeram * si.mem_unit;
}

static enum ggml_backend_dev_type dev_get_type(ggml_backend_dev_t) { return GGML_BACKEND_DEVICE_TYPE_ACCEL; }

static void dev_get_props(ggml_backend_dev_t dev, ggml_backend_dev_props * props) {
    props->name = dev_get_name(dev);
    props->description = dev_get_description(dev);
    props->type = dev_get_type(dev);
    props->device_id = nullptr;
    dev_get_memory(dev, &props->memory_free, &props->memory_total);
    props->caps = {
        /* .async                = */ false,
        /* .host_buffer          = */ false,
        /* .buffer_from_host_ptr = */ true,   // weights stay in llama.cpp's mmap: no copy
        /* .events               = */ false,
        /* .mmap_support         = */ true,
    };
}

static ggml_backend_t dev_init_backend(ggml_backend_dev_t dev, const char *) {
    auto * bc = new backend_ctx;
    bc->cpu = ggml_backend_cpu_init();
    if (bc->cpu == nullptr) {
        delete bc;
        return nullptr;
    }
    {
        // the context GlassLlama is creating right now, if any, takes this backend
        std::lock_guard<std::mutex> lock(g_mutex);
        if (g_pending_context && !g_pending_attached) {
            bc->g = g_pending_context;
            g_pending_attached = true;
        }
    }
    return new ggml_backend{backend_guid(), backend_iface, dev, bc};
}

static ggml_backend_buffer_type_t dev_get_buffer_type(ggml_backend_dev_t) { return &g_buft; }

static ggml_backend_buffer_t dev_buffer_from_host_ptr(ggml_backend_dev_t, void * ptr, size_t size, size_t) {
    return ggml_backend_buffer_init(&g_buft, buffer_iface, new buffer_ctx{ptr, false}, size);
}

// Is w an FFN weight whose matmuls the device takes? Weights in its own buffer always are; with
// stock placement, weights elsewhere are recorded while a GlassLlama loads (the new context's
// reserve graphs show them, with their final buffers) and known while their model lives.
static bool claims_ffn_weight(const ggml_tensor * w) {
    int il;
    ffn_role role;
    if (w == nullptr || w->buffer == nullptr || !ffn_name_parse(w->name, &il, &role)) {
        return false;
    }
    if (w->buffer->buft == &g_buft) {
        return true;
    }
    if (w->data == nullptr || w->view_src != nullptr) {
        return false;
    }
    std::lock_guard<std::mutex> lock(g_mutex);
    if (g_recording && g_stock_placement && g_recorded.insert(w).second) {
        g_loaded_weights.push_back((ggml_tensor *) w);
    }
    return (g_recording && g_stock_placement) || g_known.count(w) > 0;
}

static bool dev_supports_op(ggml_backend_dev_t, const ggml_tensor * op) {
    if (!g_enabled) {
        return false;  // a stock model is loading: its weights go where llama.cpp alone would put them
    }
    switch (op->op) {
        case GGML_OP_MUL_MAT: {
            const ggml_tensor * w = op->src[0];
            if (g_claim_all_matmuls && w && w->buffer && w->buffer->buft == &g_buft) {
                int il;
                ffn_role role;
                if (!ffn_name_parse(w->name, &il, &role)) {
                    // at load only (the flag is off again by graph time): keep this non-FFN weight in our
                    // plain-layout buffer; its matmuls then run on the CPU backend, which reads host buffers
                    return op->src[1]->type == GGML_TYPE_F32 && ggml_get_type_traits_cpu(w->type)->vec_dot != nullptr;
                }
            }
            if (g_stock_placement && w && w->buffer && w->buffer->buft == &g_buft && w->data == nullptr) {
                return false;  // a placement question during a load: let llama.cpp place it as stock does
            }
            if (!claims_ffn_weight(w) || op->src[1]->type != GGML_TYPE_F32 || !ggml_is_contiguous(w) ||
                w->ne[2] != 1 || w->ne[3] != 1) {
                return false;
            }
            // sparse up/gate need ggml's dot product; sparse down needs to dequantize the weight
            return row_dot_for(w->type, w->ne[0]).ok &&
                   (w->type == GGML_TYPE_F32 || ggml_get_type_traits(w->type)->to_float != nullptr);
        }
        case GGML_OP_GLU: {
            // the GLU between our up/gate matmuls: taking it keeps the FFN in one split
            const ggml_tensor * a = op->src[0];
            return a != nullptr && a->op == GGML_OP_MUL_MAT && claims_ffn_weight(a->src[0]);
        }
        default:
            return false;
    }
}

static bool dev_supports_buft(ggml_backend_dev_t, ggml_backend_buffer_type_t buft) {
    if (buft == &g_buft || ggml_backend_buft_is_host(buft)) {
        return true;
    }
    // the CPU's own extra buffer types (CPU_REPACK): our inner CPU backend computes from them
    ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
    return dev != nullptr && ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_CPU;
}

static bool dev_offload_op(ggml_backend_dev_t, const ggml_tensor *) { return false; }

static const ggml_backend_device_i device_iface = {
    /* .get_name             = */ dev_get_name,
    /* .get_description      = */ dev_get_description,
    /* .get_memory           = */ dev_get_memory,
    /* .get_type             = */ dev_get_type,
    /* .get_props            = */ dev_get_props,
    /* .init_backend         = */ dev_init_backend,
    /* .get_buffer_type      = */ dev_get_buffer_type,
    /* .get_host_buffer_type = */ nullptr,
    /* .buffer_from_host_ptr = */ dev_buffer_from_host_ptr,
    /* .supports_op          = */ dev_supports_op,
    /* .supports_buft        = */ dev_supports_buft,
    /* .offload_op           = */ dev_offload_op,
    /* .event_new            = */ nullptr,
    /* .event_free           = */ nullptr,
    /* .event_synchronize    = */ nullptr,
};

// ---------------------------------------------------------------------------------------------
// registry
// ---------------------------------------------------------------------------------------------

extern ggml_backend_reg g_reg;

static const char * reg_get_name(ggml_backend_reg_t) { return "GLASS"; }
static size_t reg_get_device_count(ggml_backend_reg_t) { return 1; }
static ggml_backend_dev_t reg_get_device(ggml_backend_reg_t, size_t) { return &g_device; }

static void * reg_get_proc_address(ggml_backend_reg_t, const char * name) {
    if (strcmp(name, "ggml_backend_set_n_threads") == 0) {
        return (void *) backend_set_n_threads;
    }
    return nullptr;
}

static const ggml_backend_reg_i reg_iface = {
    /* .get_name         = */ reg_get_name,
    /* .get_device_count = */ reg_get_device_count,
    /* .get_device       = */ reg_get_device,
    /* .get_proc_address = */ reg_get_proc_address,
};

ggml_backend_reg g_reg = {
    /* .api_version = */ GGML_BACKEND_API_VERSION,
    /* .iface       = */ reg_iface,
    /* .context     = */ nullptr,
};

ggml_backend_device g_device = {
    /* .iface   = */ device_iface,
    /* .reg     = */ &g_reg,
    /* .context = */ nullptr,
};

// ---------------------------------------------------------------------------------------------
// public entry points (plugin.h)
// ---------------------------------------------------------------------------------------------

bool plugin_register() {
    std::lock_guard<std::mutex> lock(g_mutex);
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        if (ggml_backend_dev_get(i) == &g_device) {
            return true;  // already registered in this process
        }
    }
    ggml_backend_register(&g_reg);
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        if (ggml_backend_dev_get(i) == &g_device) {
            return true;
        }
    }
    return false;  // registered into a registry llama.cpp does not use (wrong libggml)
}

void plugin_set_claim_all_matmuls(bool on) { g_claim_all_matmuls = on; }

void plugin_set_enabled(bool on) { g_enabled = on; }

void plugin_set_stock_placement(bool on) { g_stock_placement = on; }

void plugin_weights_begin() {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_loaded_weights.clear();
    g_recorded.clear();
    g_recording = true;
}

std::vector<ggml_tensor *> plugin_weights_take() {
    std::lock_guard<std::mutex> lock(g_mutex);
    std::vector<ggml_tensor *> out;
    out.swap(g_loaded_weights);
    g_recorded.clear();
    g_recording = false;
    return out;
}

void plugin_known_add(const std::vector<ggml_tensor *> & weights) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_known.insert(weights.begin(), weights.end());
}

void plugin_known_remove(const std::vector<ggml_tensor *> & weights) {
    std::lock_guard<std::mutex> lock(g_mutex);
    for (ggml_tensor * t : weights) {
        g_known.erase(t);
    }
}

void plugin_context_expect(std::shared_ptr<glass_context> g) {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_pending_context = std::move(g);
    g_pending_attached = false;
}

bool plugin_context_attached() {
    std::lock_guard<std::mutex> lock(g_mutex);
    const bool attached = g_pending_attached;
    g_pending_context.reset();
    g_pending_attached = false;
    return attached;
}

}  // namespace glass

namespace glass {

int plugin_backend_api_version() { return GGML_BACKEND_API_VERSION; }

}  // namespace glass
