// select: the hot path of neuron selection (python/glass_edge/selection.py) in plain C++17.
//
// Every function reproduces its numpy reference bit for bit: the same order of doubles (numpy's:
// all NaNs equal and after +inf, -0.0 == +0.0), ties always to the lower index, and the Borda
// score computed with the same roundings (a multiply, a multiply, an add; never a fused FMA).
// Lengths n are below 2^31 (indices are int32).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace glass {

// ranks_from_scores: ranks[j] = position of j when sorted by descending score (0 = largest),
// ties to the lower index.
void select_ranks_desc(const double * scores, int64_t n, int64_t * ranks);

// top_k_by_rank_score: the k indices with the smallest scores (ties to the lower index),
// written ascending to out[0..k). k is clamped to [0, n].
void select_topk_by_score(const double * score, int64_t n, int64_t k, int32_t * out);

// top_k_by_rank_score(ranks_from_scores(scores), k): the k largest scores (griffin), ascending.
void select_topk_desc(const double * scores, int64_t n, int64_t k, int32_t * out);

// aggregate(ranks_from_scores(local), global_rank, lam, k) with w_local = lam and
// w_global = 1.0 - lam as the caller computed them: score_j = w_local * rank_j + w_global * global_j.
void select_aggregate(const double * local, const double * global_rank, int64_t n, double w_local,
                      double w_global, int64_t k, int32_t * out);

// The Borda scores alone (for tests: they must equal numpy's doubles exactly).
void select_borda_scores(const double * local, const double * global_rank, int64_t n, double w_local,
                         double w_global, double * out);

// One layer of a whole-model selection.
enum select_kind : int {
    SELECT_TOPK_DESC = 0,   // griffin: the k largest local statistics
    SELECT_TOPK_ASC  = 1,   // global (or a-/i-glass without local rows): the k smallest prior ranks
    SELECT_BORDA     = 2,   // a-glass / i-glass: select_aggregate
};

struct select_job {
    int kind = SELECT_TOPK_ASC;
    const double * local = nullptr;    // SELECT_TOPK_DESC, SELECT_BORDA
    const double * global = nullptr;   // SELECT_TOPK_ASC, SELECT_BORDA
    int64_t n = 0;
    int64_t k = 0;
    int32_t * out = nullptr;           // k ascending indices
};

// Runs every job, on up to n_threads threads (contiguous runs of layers) when the work is large
// enough to repay starting a thread. Results do not depend on n_threads.
void select_run(const select_job * jobs, size_t n_jobs, double w_local, double w_global, int n_threads);

}  // namespace glass
