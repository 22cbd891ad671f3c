// bindings: the only door between Python and the C++ core (module glass_edge._core).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <map>
#include <string>
#include <stdexcept>

#include "ffn_layout.h"
#include "ffn_weights.h"
#include "kernels/down_axpy.h"
#include "kernels/down_packed.h"
#include "kernels/gather_matvec.h"
#include "kernels/gather_q4_0.h"
#include "kernels/gather_q4k.h"
#include "kernels/stats.h"
#include "masks.h"
#include "plugin.h"
#include "select.h"

namespace py = pybind11;
using namespace glass;

using f32_array = py::array_t<float, py::array::c_style | py::array::forcecast>;
using i32_array = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using u8_array  = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using f64_array = py::array_t<double, py::array::c_style | py::array::forcecast>;

// ---------------------------------------------------------------------------------------------
// Model: the FFN weights of one loaded llama_model
// ---------------------------------------------------------------------------------------------

struct py_model {
    std::shared_ptr<ffn_model> m;
};

static py_model model_from_loaded() {
    // while the model lives, the device takes its FFN matmuls wherever the weights live
    py_model pm{std::shared_ptr<ffn_model>(new ffn_model, [](ffn_model * m) {
        plugin_known_remove(ffn_model_weights(*m));
        delete m;
    })};
    const std::string err = ffn_model_build(*pm.m, plugin_weights_take());
    if (!err.empty()) {
        throw std::runtime_error(err);
    }
    plugin_known_add(ffn_model_weights(*pm.m));
    return pm;
}

// Weights without plain bytes yet (llama.cpp repacked them): [(name, file-independent size)].
static py::list model_missing_plain(const py_model & pm) {
    py::list out;
    for (const ggml_tensor * t : ffn_model_missing_plain(*pm.m)) {
        out.append(py::make_tuple(std::string(t->name), (size_t) ggml_nbytes(t)));
    }
    return out;
}

static void model_set_plain(py_model & pm, const std::string & name, uintptr_t address, bool releasable) {
    if (pm.m->prepared) {
        throw std::runtime_error("set_plain() after prepare()");
    }
    for (const auto & kv : pm.m->roles) {
        if (name == kv.first->name) {
            ffn_layer & L = pm.m->layers[kv.second.first];
            L.plain[kv.second.second] = (const void *) address;
            L.plain_releasable[kv.second.second] = releasable;
            return;
        }
    }
    throw std::invalid_argument("no FFN weight named " + name);
}

static py::list model_layers(const py_model & pm) {
    py::list out;
    for (const ffn_layer & L : pm.m->layers) {
        py::dict d;
        d["n_embd"] = L.n_embd;
        d["n_ff"] = L.n_ff;
        d["gate_in_up"] = L.gate_in_up;
        d["up_type"] = L.up ? ggml_type_name(L.up->type) : "";
        d["gate_type"] = L.gate ? ggml_type_name(L.gate->type) : "";
        d["down_type"] = L.down ? ggml_type_name(L.down->type) : "";
        out.append(d);
    }
    return out;
}

static f32_array model_col_norm(const py_model & pm, int il) {
    const down_layout & lay = pm.m->layers.at(il).layout;
    f32_array out((py::ssize_t) lay.col_norm.size());
    std::memcpy(out.mutable_data(), lay.col_norm.data(), lay.col_norm.size() * sizeof(float));
    return out;
}

// ---------------------------------------------------------------------------------------------
// Context: masks and statistics of one llama_context
// ---------------------------------------------------------------------------------------------

struct py_context {
    std::shared_ptr<glass_context> g;
};

static void context_set_mask(py_context & pc, int il, const i32_array & idx) {
    if (!pc.g->model) {
        throw std::runtime_error("context is not bound to a model");
    }
    const auto & layers = pc.g->model->layers;
    if (il < 0 || il >= (int) layers.size() || layers[il].n_ff == 0) {
        throw std::out_of_range("layer " + std::to_string(il) + " has no sparse FFN");
    }
    const int32_t * p = idx.data();
    const int64_t k = idx.size();
    for (int64_t i = 0; i < k; ++i) {
        if (p[i] < 0 || p[i] >= layers[il].n_ff || (i > 0 && p[i] <= p[i - 1])) {
            throw std::invalid_argument("mask indices must be ascending, unique and in [0, n_ff)");
        }
    }
    pc.g->mask_set(il, p, k);
}

static py::list context_stats(const py_context & pc, bool impact) {
    py::list out;
    const auto & sums = impact ? pc.g->imp_sum : pc.g->act_sum;
    for (const auto & s : sums) {
        f32_array a((py::ssize_t) s.size());
        std::memcpy(a.mutable_data(), s.data(), s.size() * sizeof(float));
        out.append(a);
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// kernels on raw arrays, for the tests (numpy references) and benchmarks
// ---------------------------------------------------------------------------------------------

// A 2-D ggml tensor header over caller-owned bytes: n_rows rows of n_cols values of `type`.
static ggml_tensor tensor_over(void * data, ggml_type type, int64_t n_cols, int64_t n_rows) {
    ggml_tensor t;
    std::memset(&t, 0, sizeof(t));
    t.type = type;
    t.ne[0] = n_cols; t.ne[1] = n_rows; t.ne[2] = 1; t.ne[3] = 1;
    t.nb[0] = ggml_type_size(type);
    t.nb[1] = ggml_row_size(type, n_cols);
    t.nb[2] = t.nb[1] * n_rows;
    t.nb[3] = t.nb[2];
    t.data = data;
    return t;
}

static f32_array kernel_gather_matvec(const u8_array & w, int type, int64_t n_cols, const f32_array & x,
                                      const i32_array & rows) {
    const row_dot rd = row_dot_for((ggml_type) type, n_cols);
    if (!rd.ok) {
        throw std::invalid_argument("ggml has no CPU dot product for this type and row length");
    }
    const size_t row_bytes = ggml_row_size((ggml_type) type, n_cols);
    const int64_t n_rows = (int64_t) (w.size() / row_bytes);
    if (x.size() != n_cols || (size_t) w.size() != row_bytes * n_rows) {
        throw std::invalid_argument("weight bytes or x length do not match n_cols");
    }
    for (int64_t i = 0; i < rows.size(); ++i) {
        if (rows.data()[i] < 0 || rows.data()[i] >= n_rows) {
            throw std::out_of_range("row index out of range");
        }
    }
    std::vector<uint8_t> xq(rd.x_row_bytes);
    row_dot_convert_x(rd, x.data(), xq.data());
    f32_array out(n_rows);
    std::fill(out.mutable_data(), out.mutable_data() + n_rows, 0.0f);
    gather_matvec(rd, w.data(), row_bytes, rows.data(), rows.size(), xq.data(), out.mutable_data());
    return out;
}

// Builds the down layout from ggml bytes (n_embd rows of n_ff values) and applies it to h.
// packed=false forces the int8 layout for types that would be packed. Returns (y, col_norm, packed).
static py::tuple kernel_down(const u8_array & w, int type, int64_t n_ff, int64_t n_embd, const f32_array & h,
                             const i32_array & idx, bool reference, bool packed) {
    if ((size_t) w.size() != ggml_row_size((ggml_type) type, n_ff) * n_embd || h.size() != n_ff) {
        throw std::invalid_argument("weight bytes or h length do not match n_ff x n_embd");
    }
    ggml_tensor t = tensor_over((void *) w.data(), (ggml_type) type, n_ff, n_embd);
    down_layout lay;
    down_layout_build(lay, &t, 2, packed);
    std::vector<float> y(lay.n_blk * NM_BLOCK, 0.0f);
    if (lay.packed) {
        std::vector<float> acc(y.size());
        (reference ? down_packed_axpy_ref : down_packed_axpy)(lay.pview(), idx.data(), idx.size(), h.data(),
                                                              y.data(), 0, lay.n_blk, acc.data());
    } else {
        (reference ? down_axpy_ref : down_axpy)(lay.view(), idx.data(), idx.size(), h.data(), y.data(), 0, lay.n_blk);
    }
    f32_array out(n_embd);
    std::memcpy(out.mutable_data(), y.data(), n_embd * sizeof(float));
    f32_array norms(n_ff);
    std::memcpy(norms.mutable_data(), lay.col_norm.data(), n_ff * sizeof(float));
    return py::make_tuple(out, norms, lay.packed);
}

static py::tuple kernel_stats(const f32_array & h, const f32_array & col_norm) {
    if (h.ndim() != 2 || col_norm.size() != h.shape(1)) {
        throw std::invalid_argument("h must be [n_tok, n_ff] and col_norm [n_ff]");
    }
    const int64_t n_tok = h.shape(0), n_ff = h.shape(1);
    std::vector<float> ia(n_tok), ii(n_tok);
    f32_array act(n_ff), imp(n_ff);
    std::fill(act.mutable_data(), act.mutable_data() + n_ff, 0.0f);
    std::fill(imp.mutable_data(), imp.mutable_data() + n_ff, 0.0f);
    stats_token_norms(h.data(), n_ff, n_ff, 0, n_tok, col_norm.data(), ia.data(), ii.data());
    stats_accumulate(h.data(), n_ff, 0, n_tok, col_norm.data(), ia.data(), ii.data(), 0, n_ff,
                     act.mutable_data(), imp.mutable_data());
    return py::make_tuple(act, imp);
}

// ---------------------------------------------------------------------------------------------
// selection (select.h): selection.py's hot path; every layer of a model in one call
// ---------------------------------------------------------------------------------------------

static f64_array vector_1d(const py::handle & h, const char * what) {
    f64_array a = f64_array::ensure(h);
    if (!a || a.ndim() != 1) {
        throw std::invalid_argument(std::string(what) + " must be a 1-D float64 array");
    }
    return a;
}

// kinds[i] (select_kind), local[i] / global_rank[i] (arrays or None, as the kind needs), k[i]:
// one int32 array of ascending indices per layer. w_local = lam and w_global = 1.0 - lam.
static py::list select_layers(const std::vector<int> & kinds, const py::list & local, const py::list & global_rank,
                              const std::vector<int64_t> & k, double w_local, double w_global, int n_threads) {
    const size_t n_layer = kinds.size();
    if (local.size() != n_layer || global_rank.size() != n_layer || k.size() != n_layer) {
        throw std::invalid_argument("kinds, local, global_rank and k must have one entry per layer");
    }
    std::vector<f64_array> keep;   // the (possibly converted) inputs, alive while the GIL is released
    std::vector<select_job> jobs(n_layer);
    py::list out;
    for (size_t il = 0; il < n_layer; ++il) {
        select_job & job = jobs[il];
        job.kind = kinds[il];
        const bool need_local = job.kind == SELECT_TOPK_DESC || job.kind == SELECT_BORDA;
        const bool need_global = job.kind == SELECT_TOPK_ASC || job.kind == SELECT_BORDA;
        if (!need_local && !need_global) {
            throw std::invalid_argument("unknown selection kind " + std::to_string(job.kind));
        }
        job.n = -1;
        if (need_local) {
            keep.push_back(vector_1d(local[il], "local"));
            job.local = keep.back().data();
            job.n = keep.back().size();
        }
        if (need_global) {
            keep.push_back(vector_1d(global_rank[il], "global_rank"));
            job.global = keep.back().data();
            if (job.n >= 0 && job.n != keep.back().size()) {
                throw std::invalid_argument("local and global_rank of layer " + std::to_string(il) + " differ in length");
            }
            job.n = keep.back().size();
        }
        job.k = std::min(std::max<int64_t>(k[il], 0), job.n);
        i32_array o((py::ssize_t) job.k);
        job.out = o.mutable_data();
        out.append(o);
    }
    {
        py::gil_scoped_release release;
        select_run(jobs.data(), jobs.size(), w_local, w_global, n_threads);
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// module
// ---------------------------------------------------------------------------------------------

#ifndef GLASS_LLAMA_CPP_VERSION
#error "GLASS_LLAMA_CPP_VERSION must name the llama-cpp-python version the headers come from"
#endif

PYBIND11_MODULE(_core, m) {
    m.doc() = "glass-edge C++ core: the GLASS ggml backend device, sparse FFN kernels, statistics";

    m.attr("built_against_llama_cpp") = GLASS_LLAMA_CPP_VERSION;
    m.attr("ggml_backend_api_version") = plugin_backend_api_version();
    m.def("register_plugin", &plugin_register, "Register the GLASS device with llama.cpp's ggml");
    m.def("down_axpy_path", &down_axpy_path);
    m.def("set_claim_all_matmuls", &plugin_set_claim_all_matmuls,
          "Loads while on keep every matmul weight unrepacked in the plug-in's buffer");
    m.def("set_stock_placement", &plugin_set_stock_placement,
          "While on, loads leave FFN weights where stock llama.cpp puts them (see plugin.h)");
    m.def("set_plugin_enabled", &plugin_set_enabled,
          "Loads while off place no weight on the GLASS device (stock llama.cpp, e.g. a benchmark's reference)");
    m.def("weights_begin", &plugin_weights_begin, "Forget FFN weights seen so far (call before a load)");

    py::class_<py_model>(m, "Model")
        .def_static("from_loaded", &model_from_loaded, "The FFN weights of the model just loaded")
        .def_property_readonly("n_layer", [](const py_model & pm) { return pm.m->layers.size(); })
        .def_property_readonly("layers", &model_layers)
        .def_property_readonly("prepared", [](const py_model & pm) { return pm.m->prepared; })
        .def("prepare", [](py_model & pm, int n_threads) {
            std::string err;
            {
                py::gil_scoped_release release;
                err = ffn_model_prepare(*pm.m, n_threads);
            }
            if (!err.empty()) {
                throw std::runtime_error(err);
            }
        }, py::arg("n_threads"))
        .def("missing_plain", &model_missing_plain)
        .def("set_plain", &model_set_plain, py::arg("name"), py::arg("address"), py::arg("releasable") = false,
             "The plain-layout bytes of a weight llama.cpp repacked (they must outlive the model); "
             "releasable: read-only file pages that prepare() may drop once it has its own copy")
        .def("layout_bytes", [](const py_model & pm) {
            size_t b = 0;
            for (const auto & L : pm.m->layers) b += L.layout.bytes();
            return b;
        })
        .def("col_norm", &model_col_norm);

    py::class_<py_context>(m, "Context")
        .def(py::init([]() { return py_context{std::make_shared<glass_context>()}; }))
        .def("bind", [](py_context & pc, const py_model & pm) {
            if (!pm.m->prepared) {
                throw std::runtime_error("prepare() the model before binding a context to it");
            }
            pc.g->bind(pm.m);
        })
        .def("expect", [](py_context & pc) { plugin_context_expect(pc.g); },
             "The next llama_context created takes this glass context")
        .def_static("attached", &plugin_context_attached)
        .def("set_mask", &context_set_mask, py::arg("layer"), py::arg("indices"))
        .def("clear_masks", [](py_context & pc) { pc.g->masks_clear(); })
        .def_property("force_sparse_kernels", [](const py_context & pc) { return pc.g->force_sparse_kernels; },
                      [](py_context & pc, bool v) { pc.g->force_sparse_kernels = v; })
        .def_property("force_ggml_dot", [](const py_context & pc) { return pc.g->force_ggml_dot; },
                      [](py_context & pc, bool v) { pc.g->force_ggml_dot = v; })
        .def_property_readonly("any_mask", [](const py_context & pc) { return pc.g->any_mask; })
        .def("stats_begin", [](py_context & pc, bool skip_first, int64_t first_rows) {
            if (!pc.g->model) {
                throw std::runtime_error("context is not bound to a model");
            }
            pc.g->stats_begin(skip_first, first_rows);
        }, py::arg("skip_first"), py::arg("first_rows"))
        .def("stats_end", [](py_context & pc) { pc.g->stats_end(); })
        .def_property_readonly("bound", [](const py_context & pc) { return (bool) pc.g->model; })
        .def("act_stats", [](const py_context & pc) { return context_stats(pc, false); })
        .def("imp_stats", [](const py_context & pc) { return context_stats(pc, true); })
        .def("stats_rows", [](const py_context & pc) { return pc.g->stats_rows; })
        .def_property_readonly("n_sparse_ops", [](const py_context & pc) { return pc.g->n_sparse_ops.load(); })
        .def_property_readonly("n_dense_graphs", [](const py_context & pc) { return pc.g->n_dense_graphs.load(); })
        .def_property_readonly("ffn_seconds", [](const py_context & pc) { return pc.g->ffn_compute_ns.load() * 1e-9; },
                               "Wall time spent computing this context's FFN splits so far");

    m.def("kernel_gather_matvec", &kernel_gather_matvec, py::arg("w"), py::arg("type"), py::arg("n_cols"),
          py::arg("x"), py::arg("rows"));
    m.def("kernel_down", &kernel_down, py::arg("w"), py::arg("type"), py::arg("n_ff"), py::arg("n_embd"),
          py::arg("h"), py::arg("idx"), py::arg("reference") = false, py::arg("packed") = true);
    m.def("down_packed_path", &down_packed_path);
    m.def("gather_fast_paths", [] {
        return std::map<std::string, std::string>{{"q4_k", kernel_path_best(gather_q4k_paths()).name},
                                                  {"q4_0", kernel_path_best(gather_q4_0_paths()).name}};
    }, "The hand-written gather path this CPU runs per weight type (\"scalar\": ggml's vec_dot runs instead)");
    m.def("kernel_stats", &kernel_stats, py::arg("h"), py::arg("col_norm"));

    m.attr("SELECT_TOPK_DESC") = (int) SELECT_TOPK_DESC;
    m.attr("SELECT_TOPK_ASC") = (int) SELECT_TOPK_ASC;
    m.attr("SELECT_BORDA") = (int) SELECT_BORDA;
    m.def("select_layers", &select_layers, py::arg("kinds"), py::arg("local"), py::arg("global_rank"),
          py::arg("k"), py::arg("w_local"), py::arg("w_global"), py::arg("n_threads") = 2,
          "Per-layer masks of selection.select (see src/glass_cpp/select.h), the GIL released");
    m.def("select_ranks", [](const f64_array & scores) {
        py::array_t<int64_t> r(scores.size());
        select_ranks_desc(scores.data(), scores.size(), r.mutable_data());
        return r;
    }, py::arg("scores"), "selection.ranks_from_scores");
    m.def("select_topk", [](const f64_array & score, int64_t k) {
        i32_array o((py::ssize_t) std::min(std::max<int64_t>(k, 0), (int64_t) score.size()));
        select_topk_by_score(score.data(), score.size(), k, o.mutable_data());
        return o;
    }, py::arg("score"), py::arg("k"), "selection.top_k_by_rank_score");
    m.def("select_borda_scores", [](const f64_array & local, const f64_array & global_rank, double w_local,
                                    double w_global) {
        if (local.size() != global_rank.size()) {
            throw std::invalid_argument("local and global_rank differ in length");
        }
        f64_array o(local.size());
        select_borda_scores(local.data(), global_rank.data(), local.size(), w_local, w_global, o.mutable_data());
        return o;
    }, py::arg("local"), py::arg("global_rank"), py::arg("w_local"), py::arg("w_global"),
       "The scores selection.aggregate ranks: w_local * ranks_from_scores(local) + w_global * global_rank");
}
