// select: neuron selection's hot path (ranks, top-k, Borda aggregation), bit-identical to the
// numpy reference in python/glass_edge/selection.py. See select.h.
//
// Doubles are compared through order-preserving 64-bit keys: ascending keys == numpy's ascending
// float order (NaN after +inf and all NaNs equal, -0.0 == +0.0), so a stable sort of keys is
// np.lexsort((arange(n), x)) exactly, and ties fall to the lower index without a second key.
//
// Build with -ffp-contract=off (CMakeLists.txt sets it for this file): the Borda score must round
// after each multiply like numpy does; a fused multiply-add would change the last bit of a score
// and with it the winner of a near-tie.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#include "select.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <numeric>
#include <system_error>
#include <thread>

namespace glass {

namespace {

// Ascending key order == numpy's ascending order of doubles.
inline uint64_t order_key(double x) {
    if (x != x) {
        return UINT64_MAX;          // every NaN: equal to each other, after +inf (key 0xFFF0...)
    }
    if (x == 0.0) {
        x = 0.0;                    // -0.0 == +0.0
    }
    uint64_t u;
    std::memcpy(&u, &x, sizeof(u));
    return (u >> 63) ? ~u : (u | (1ull << 63));   // negatives reversed below positives
}

// Per-thread buffers, reused across the layers a thread handles.
struct scratch {
    std::vector<uint64_t> key, key2, tmp;
    std::vector<uint32_t> idx, idx2, hist;
    std::vector<double> score;
};

// One stable LSD pass over values v[0..n) by the digit (v >> shift) & mask into out (h: counts).
template <typename T, typename Carry>
void radix_pass(const T * v, T * out, int64_t n, int shift, uint64_t mask, uint32_t * h, Carry carry) {
    uint32_t sum = 0;
    for (uint64_t b = 0; b <= mask; ++b) {
        const uint32_t c = h[b];
        h[b] = sum;
        sum += c;
    }
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t pos = h[(v[i] >> shift) & mask]++;
        out[pos] = v[i];
        carry(i, pos);
    }
}

// Stable LSD radix sort of s.key (n keys): afterwards s.idx lists the indices by ascending key,
// equal keys by ascending index. Only the bits in which the keys differ are sorted (float32-derived
// statistics have ~29 constant low bits; the sign is constant), in the fewest passes of at most
// 11-bit digits. When those bits and the index fit in 64 bits together (float32-derived
// statistics, Borda scores at lam = 0.5) each value carries its index in its low bits, so a pass
// moves one array instead of two. At n = 8192 this took 1/2 (float64 statistics) to 1/4
// (float32-derived ones) of the time of std::sort on (key, index) pairs.
void radix_sort_keys(scratch & s, int64_t n) {
    constexpr int MAX_BITS = 11;
    s.idx.resize(n);
    uint64_t k_or = 0, k_and = ~0ull;
    for (int64_t i = 0; i < n; ++i) {
        k_or |= s.key[i];
        k_and &= s.key[i];
    }
    const uint64_t diff = k_or ^ k_and;
    if (diff == 0) {
        std::iota(s.idx.begin(), s.idx.end(), 0u);   // all keys equal: index order
        return;
    }
    const int lo = __builtin_ctzll(diff), hi = 63 - __builtin_clzll(diff);
    const int width = hi - lo + 1;
    const int passes = (width + MAX_BITS - 1) / MAX_BITS;
    const int bits = (width + passes - 1) / passes;
    const uint64_t mask = (1ull << bits) - 1;
    const int ib = n > 1 ? 64 - __builtin_clzll((uint64_t) (n - 1)) : 0;   // bits of an index
    const bool packed = width + ib <= 64;
    const int base = packed ? ib : lo;      // where the sorted bits start in a value
    s.key2.resize(n);
    if (packed) {
        for (int64_t i = 0; i < n; ++i) {
            s.key[i] = (((s.key[i] >> lo) & (~0ull >> (64 - width))) << ib) | (uint64_t) i;
        }
    } else {
        std::iota(s.idx.begin(), s.idx.end(), 0u);
        s.idx2.resize(n);
    }
    s.hist.assign((size_t) passes << bits, 0);
    for (int64_t i = 0; i < n; ++i) {
        const uint64_t v = s.key[i] >> base;
        for (int p = 0; p < passes; ++p) {
            ++s.hist[((size_t) p << bits) + ((v >> (p * bits)) & mask)];
        }
    }
    for (int p = 0; p < passes; ++p) {
        uint32_t * h = s.hist.data() + ((size_t) p << bits);
        const int shift = base + p * bits;
        if (packed) {
            radix_pass(s.key.data(), s.key2.data(), n, shift, mask, h, [](int64_t, uint32_t) {});
        } else {
            const uint32_t * is = s.idx.data();
            uint32_t * id = s.idx2.data();
            radix_pass(s.key.data(), s.key2.data(), n, shift, mask, h,
                       [is, id](int64_t i, uint32_t pos) { id[pos] = is[i]; });
            s.idx.swap(s.idx2);
        }
        s.key.swap(s.key2);
    }
    if (packed) {
        const uint64_t imask = (1ull << ib) - 1;
        for (int64_t i = 0; i < n; ++i) {
            s.idx[i] = (uint32_t) (s.key[i] & imask);
        }
    }
}

// Keys of -scores: ascending key == descending score (NaN still last, as numpy sorts -NaN).
void keys_desc(scratch & s, const double * scores, int64_t n) {
    s.key.resize(n);
    for (int64_t i = 0; i < n; ++i) {
        s.key[i] = order_key(-scores[i]);
    }
}

void keys_asc(scratch & s, const double * score, int64_t n) {
    s.key.resize(n);
    for (int64_t i = 0; i < n; ++i) {
        s.key[i] = order_key(score[i]);
    }
}

// The k-th smallest (k >= 1) of keys[0..n) by MSD radix selection: find the digit bucket that
// holds it, keep only that bucket's keys, repeat on the next digit. O(n) with small constants:
// std::nth_element took about three times as long on a layer's Borda scores.
uint64_t kth_smallest_key(scratch & s, const uint64_t * key, int64_t n, int64_t k) {
    constexpr int BITS = 11;
    constexpr uint64_t NB = 1ull << BITS;
    uint64_t k_or = 0, k_and = ~0ull;
    for (int64_t i = 0; i < n; ++i) {
        k_or |= key[i];
        k_and &= key[i];
    }
    uint64_t diff = k_or ^ k_and;
    const uint64_t * cand = key;    // the keys that can still be the k-th
    int64_t m = n;
    s.tmp.resize(n);
    uint32_t h[NB];
    while (diff != 0) {
        const int hi = 63 - __builtin_clzll(diff);
        const int shift = std::max(0, hi + 1 - BITS);
        std::memset(h, 0, sizeof(h));
        for (int64_t i = 0; i < m; ++i) {
            ++h[(cand[i] >> shift) & (NB - 1)];
        }
        uint64_t b = 0;
        for (; (int64_t) h[b] < k; ++b) {
            k -= h[b];
        }
        int64_t m2 = 0;
        uint64_t * dst = s.tmp.data();   // in place after the first round (m2 <= i)
        for (int64_t i = 0; i < m; ++i) {
            dst[m2] = cand[i];
            m2 += ((cand[i] >> shift) & (NB - 1)) == b;
        }
        cand = dst;
        m = m2;
        diff &= shift > 0 ? (1ull << shift) - 1 : 0;   // the digits below this one
        if (m == 1) {
            break;
        }
        k_or = 0;
        k_and = ~0ull;
        for (int64_t i = 0; i < m; ++i) {
            k_or |= cand[i];
            k_and &= cand[i];
        }
        diff &= k_or ^ k_and;
    }
    return cand[0];
}

// The k indices of the smallest keys (ties to the lower index), ascending, in O(n): find the
// k-th smallest key t; keep every key < t and the lowest-indexed keys == t.
void topk_keys(scratch & s, int64_t n, int64_t k, int32_t * out) {
    k = std::min(std::max<int64_t>(k, 0), n);
    if (k == 0) {
        return;
    }
    if (k == n) {
        std::iota(out, out + n, 0);
        return;
    }
    const uint64_t * key = s.key.data();
    const uint64_t t = kth_smallest_key(s, key, n, k);
    int64_t n_less = 0;
    for (int64_t i = 0; i < n; ++i) {
        n_less += key[i] < t;
    }
    int64_t n_eq = k - n_less;      // how many keys equal to t make the cut: the first ones
    int64_t m = 0;
    for (int64_t i = 0; i < n && m < k; ++i) {
        if (key[i] < t || (key[i] == t && n_eq-- > 0)) {
            out[m++] = (int32_t) i;
        }
    }
}

// score_j = w_local * rank_local(j) + w_global * global_rank[j]: the same three roundings as
// numpy's lam * l + (1 - lam) * g on float64 arrays (see the -ffp-contract=off note on top).
void borda_scores(scratch & s, const double * local, const double * global_rank, int64_t n,
                  double w_local, double w_global, double * out) {
    keys_desc(s, local, n);
    radix_sort_keys(s, n);
    // ranks as doubles (exact: n < 2^53), then one sequential pass that vectorizes
    double * rank = out;
    for (int64_t i = 0; i < n; ++i) {
        rank[s.idx[i]] = (double) i;
    }
    for (int64_t j = 0; j < n; ++j) {
        const double a = w_local * rank[j];
        const double b = w_global * global_rank[j];
        out[j] = a + b;
    }
}

void run_job(scratch & s, const select_job & job, double w_local, double w_global) {
    switch (job.kind) {
    case SELECT_TOPK_DESC:
        keys_desc(s, job.local, job.n);
        topk_keys(s, job.n, job.k, job.out);
        break;
    case SELECT_TOPK_ASC:
        keys_asc(s, job.global, job.n);
        topk_keys(s, job.n, job.k, job.out);
        break;
    case SELECT_BORDA:
        s.score.resize(job.n);
        borda_scores(s, job.local, job.global, job.n, w_local, w_global, s.score.data());
        keys_asc(s, s.score.data(), job.n);
        topk_keys(s, job.n, job.k, job.out);
        break;
    }
}

// Rough relative cost of a job (a Borda layer sorts; the others only select).
int64_t job_cost(const select_job & job) {
    return job.kind == SELECT_BORDA ? 4 * job.n : job.n;
}

}  // namespace

void select_ranks_desc(const double * scores, int64_t n, int64_t * ranks) {
    if (n <= 0) {
        return;
    }
    scratch s;
    keys_desc(s, scores, n);
    radix_sort_keys(s, n);
    for (int64_t i = 0; i < n; ++i) {
        ranks[s.idx[i]] = i;
    }
}

void select_topk_by_score(const double * score, int64_t n, int64_t k, int32_t * out) {
    scratch s;
    keys_asc(s, score, n);
    topk_keys(s, n, k, out);
}

void select_topk_desc(const double * scores, int64_t n, int64_t k, int32_t * out) {
    scratch s;
    keys_desc(s, scores, n);
    topk_keys(s, n, k, out);
}

void select_borda_scores(const double * local, const double * global_rank, int64_t n, double w_local,
                         double w_global, double * out) {
    if (n <= 0) {
        return;
    }
    scratch s;
    borda_scores(s, local, global_rank, n, w_local, w_global, out);
}

void select_aggregate(const double * local, const double * global_rank, int64_t n, double w_local,
                      double w_global, int64_t k, int32_t * out) {
    if (n <= 0) {
        return;
    }
    scratch s;
    select_job job;
    job.kind = SELECT_BORDA;
    job.local = local;
    job.global = global_rank;
    job.n = n;
    job.k = k;
    job.out = out;
    run_job(s, job, w_local, w_global);
}

void select_run(const select_job * jobs, size_t n_jobs, double w_local, double w_global, int n_threads) {
    // below this much work a thread's start-up (tens of microseconds) costs more than it saves
    constexpr int64_t MIN_COST_PER_THREAD = 1 << 15;
    int64_t total = 0;
    for (size_t i = 0; i < n_jobs; ++i) {
        total += job_cost(jobs[i]);
    }
    int64_t nt = std::max(1, n_threads);
    if (const unsigned hc = std::thread::hardware_concurrency(); hc > 0) {
        nt = std::min<int64_t>(nt, hc);
    }
    nt = std::min<int64_t>({nt, (int64_t) n_jobs, std::max<int64_t>(1, total / MIN_COST_PER_THREAD)});
    auto run_range = [&](size_t begin, size_t end) {
        scratch s;
        for (size_t i = begin; i < end; ++i) {
            if (jobs[i].n > 0) {
                run_job(s, jobs[i], w_local, w_global);
            }
        }
    };
    if (nt <= 1) {
        run_range(0, n_jobs);
        return;
    }
    // contiguous runs of layers of about equal cost; the calling thread takes the first
    std::vector<size_t> bounds{0};
    int64_t acc = 0;
    for (size_t i = 0; i < n_jobs && (int64_t) bounds.size() < nt; ++i) {
        acc += job_cost(jobs[i]);
        if (acc * nt >= total * (int64_t) bounds.size()) {
            bounds.push_back(i + 1);
        }
    }
    bounds.push_back(n_jobs);
    bounds.erase(std::unique(bounds.begin(), bounds.end()), bounds.end());   // no empty runs
    const size_t n_parts = bounds.size() - 1;
    std::vector<std::exception_ptr> errors(n_parts);
    auto run_part = [&](size_t t) {
        try {
            run_range(bounds[t], bounds[t + 1]);
        } catch (...) {
            errors[t] = std::current_exception();
        }
    };
    std::vector<std::thread> threads;
    size_t t_started = 1;   // parts 1.. on threads, as long as threads can be started
    try {
        for (; t_started < n_parts; ++t_started) {
            threads.emplace_back(run_part, t_started);
        }
    } catch (const std::system_error &) {
        // out of threads: the calling thread does the rest
    }
    run_part(0);
    for (size_t t = t_started; t < n_parts; ++t) {
        run_part(t);
    }
    for (auto & th : threads) {
        th.join();
    }
    for (auto & e : errors) {
        if (e) {
            std::rethrow_exception(e);
        }
    }
}

}  // namespace glass
