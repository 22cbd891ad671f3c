// stats: scalar reference and SIMD paths of the prefill statistics.
//
// The prefill pass reads h twice per token (norms, then sums). The norms are reductions summed in
// double, which a compiler will not vectorise without reordering licence, so the SIMD paths do
// it by hand (several double accumulators); the sums are element-wise and vectorise directly.
#include "stats.h"

#include <cmath>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GLASS_STATS_X86 1
#elif defined(__aarch64__)
#include <arm_neon.h>
#define GLASS_STATS_NEON 1
#endif

namespace glass {

static float inv_norm(double sumsq) {
    return sumsq > 0.0 ? (float) (1.0 / std::sqrt(sumsq)) : 0.0f;
}

// ---------------------------------------------------------------------------------------------
// scalar reference
// ---------------------------------------------------------------------------------------------

// Sums of v^2 and (v c)^2 over j in [j0, n_ff) of one token, in double.
static void sumsq_scalar(const float * ht, const float * col_norm, int64_t j0, int64_t n_ff,
                         double & sa, double & si) {
    for (int64_t j = j0; j < n_ff; ++j) {
        const double v = ht[j];
        const double vc = v * col_norm[j];
        sa += v * v;
        si += vc * vc;
    }
}

static void token_norms_ref(const float * h, int64_t n_ff, int64_t row_stride, int64_t t0, int64_t t1,
                            const float * col_norm, float * inv_act, float * inv_imp) {
    for (int64_t t = t0; t < t1; ++t) {
        double sa = 0.0, si = 0.0;
        sumsq_scalar(h + t * row_stride, col_norm, 0, n_ff, sa, si);
        inv_act[t] = inv_norm(sa);
        inv_imp[t] = inv_norm(si);
    }
}

// act_sum[j] += (h_j ia)^2, imp_sum[j] += (h_j c_j ii)^2 for j in [j0, j1) of one token.
static void accumulate_scalar(const float * ht, const float * col_norm, float ia, float ii,
                              int64_t j0, int64_t j1, float * act_sum, float * imp_sum) {
    for (int64_t j = j0; j < j1; ++j) {
        const float a = ht[j] * ia;
        const float i = ht[j] * col_norm[j] * ii;
        act_sum[j] += a * a;
        imp_sum[j] += i * i;
    }
}

static void accumulate_ref(const float * h, int64_t row_stride, int64_t t0, int64_t t1,
                           const float * col_norm, const float * inv_act, const float * inv_imp,
                           int64_t j0, int64_t j1, float * act_sum, float * imp_sum) {
    for (int64_t t = t0; t < t1; ++t) {
        accumulate_scalar(h + t * row_stride, col_norm, inv_act[t], inv_imp[t], j0, j1, act_sum, imp_sum);
    }
}

// ---------------------------------------------------------------------------------------------
// x86: AVX2+FMA (compiled in every x86 build, chosen at run time)
// ---------------------------------------------------------------------------------------------

#if defined(GLASS_STATS_X86)

__attribute__((target("avx2,fma")))
static double hsum_avx2(__m256d v) {
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

__attribute__((target("avx2,fma")))
static void token_norms_avx2(const float * h, int64_t n_ff, int64_t row_stride, int64_t t0, int64_t t1,
                             const float * col_norm, float * inv_act, float * inv_imp) {
    for (int64_t t = t0; t < t1; ++t) {
        const float * ht = h + t * row_stride;
        __m256d sa0 = _mm256_setzero_pd(), sa1 = _mm256_setzero_pd();
        __m256d si0 = _mm256_setzero_pd(), si1 = _mm256_setzero_pd();
        int64_t j = 0;
        for (; j + 8 <= n_ff; j += 8) {
            const __m256 v = _mm256_loadu_ps(ht + j);
            const __m256 c = _mm256_loadu_ps(col_norm + j);
            const __m256d v0 = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
            const __m256d v1 = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
            const __m256d vc0 = _mm256_mul_pd(v0, _mm256_cvtps_pd(_mm256_castps256_ps128(c)));
            const __m256d vc1 = _mm256_mul_pd(v1, _mm256_cvtps_pd(_mm256_extractf128_ps(c, 1)));
            sa0 = _mm256_fmadd_pd(v0, v0, sa0);
            sa1 = _mm256_fmadd_pd(v1, v1, sa1);
            si0 = _mm256_fmadd_pd(vc0, vc0, si0);
            si1 = _mm256_fmadd_pd(vc1, vc1, si1);
        }
        double sa = hsum_avx2(_mm256_add_pd(sa0, sa1));
        double si = hsum_avx2(_mm256_add_pd(si0, si1));
        sumsq_scalar(ht, col_norm, j, n_ff, sa, si);
        inv_act[t] = inv_norm(sa);
        inv_imp[t] = inv_norm(si);
    }
}

__attribute__((target("avx2,fma")))
static void accumulate_avx2(const float * h, int64_t row_stride, int64_t t0, int64_t t1,
                            const float * col_norm, const float * inv_act, const float * inv_imp,
                            int64_t j0, int64_t j1, float * act_sum, float * imp_sum) {
    for (int64_t t = t0; t < t1; ++t) {
        const float * ht = h + t * row_stride;
        const __m256 ia = _mm256_set1_ps(inv_act[t]);
        const __m256 ii = _mm256_set1_ps(inv_imp[t]);
        int64_t j = j0;
        for (; j + 8 <= j1; j += 8) {
            const __m256 v = _mm256_loadu_ps(ht + j);
            const __m256 a = _mm256_mul_ps(v, ia);
            const __m256 i = _mm256_mul_ps(_mm256_mul_ps(v, _mm256_loadu_ps(col_norm + j)), ii);
            _mm256_storeu_ps(act_sum + j, _mm256_fmadd_ps(a, a, _mm256_loadu_ps(act_sum + j)));
            _mm256_storeu_ps(imp_sum + j, _mm256_fmadd_ps(i, i, _mm256_loadu_ps(imp_sum + j)));
        }
        accumulate_scalar(ht, col_norm, inv_act[t], inv_imp[t], j, j1, act_sum, imp_sum);
    }
}

#endif

// ---------------------------------------------------------------------------------------------
// aarch64: NEON (every AArch64 CPU has it)
// ---------------------------------------------------------------------------------------------

#if defined(GLASS_STATS_NEON)

static void token_norms_neon(const float * h, int64_t n_ff, int64_t row_stride, int64_t t0, int64_t t1,
                             const float * col_norm, float * inv_act, float * inv_imp) {
    for (int64_t t = t0; t < t1; ++t) {
        const float * ht = h + t * row_stride;
        float64x2_t sa0 = vdupq_n_f64(0.0), sa1 = vdupq_n_f64(0.0);
        float64x2_t si0 = vdupq_n_f64(0.0), si1 = vdupq_n_f64(0.0);
        int64_t j = 0;
        for (; j + 4 <= n_ff; j += 4) {
            const float32x4_t v = vld1q_f32(ht + j);
            const float32x4_t c = vld1q_f32(col_norm + j);
            const float64x2_t v0 = vcvt_f64_f32(vget_low_f32(v));
            const float64x2_t v1 = vcvt_high_f64_f32(v);
            const float64x2_t vc0 = vmulq_f64(v0, vcvt_f64_f32(vget_low_f32(c)));
            const float64x2_t vc1 = vmulq_f64(v1, vcvt_high_f64_f32(c));
            sa0 = vfmaq_f64(sa0, v0, v0);
            sa1 = vfmaq_f64(sa1, v1, v1);
            si0 = vfmaq_f64(si0, vc0, vc0);
            si1 = vfmaq_f64(si1, vc1, vc1);
        }
        double sa = vaddvq_f64(vaddq_f64(sa0, sa1));
        double si = vaddvq_f64(vaddq_f64(si0, si1));
        sumsq_scalar(ht, col_norm, j, n_ff, sa, si);
        inv_act[t] = inv_norm(sa);
        inv_imp[t] = inv_norm(si);
    }
}

static void accumulate_neon(const float * h, int64_t row_stride, int64_t t0, int64_t t1,
                            const float * col_norm, const float * inv_act, const float * inv_imp,
                            int64_t j0, int64_t j1, float * act_sum, float * imp_sum) {
    for (int64_t t = t0; t < t1; ++t) {
        const float * ht = h + t * row_stride;
        const float ia = inv_act[t], ii = inv_imp[t];
        int64_t j = j0;
        for (; j + 4 <= j1; j += 4) {
            const float32x4_t v = vld1q_f32(ht + j);
            const float32x4_t a = vmulq_n_f32(v, ia);
            const float32x4_t i = vmulq_n_f32(vmulq_f32(v, vld1q_f32(col_norm + j)), ii);
            vst1q_f32(act_sum + j, vfmaq_f32(vld1q_f32(act_sum + j), a, a));
            vst1q_f32(imp_sum + j, vfmaq_f32(vld1q_f32(imp_sum + j), i, i));
        }
        accumulate_scalar(ht, col_norm, ia, ii, j, j1, act_sum, imp_sum);
    }
}

#endif

// ---------------------------------------------------------------------------------------------
// the path list and the dispatch
// ---------------------------------------------------------------------------------------------

const std::vector<kernel_path<stats_fns>> & stats_paths() {
    static const std::vector<kernel_path<stats_fns>> paths = [] {
        const cpu_caps & cpu = cpu_caps_get();
        std::vector<kernel_path<stats_fns>> p = {{"scalar", {token_norms_ref, accumulate_ref}, true}};
#if defined(GLASS_STATS_X86)
        p.push_back({"avx2", {token_norms_avx2, accumulate_avx2}, cpu.avx2_fma});
#elif defined(GLASS_STATS_NEON)
        p.push_back({"neon", {token_norms_neon, accumulate_neon}, cpu.neon});
#endif
        (void) cpu;
        return p;
    }();
    return paths;
}

static const stats_fns & stats_best() {
    static const stats_fns & best = kernel_path_best(stats_paths()).fns;
    return best;
}

void stats_token_norms(const float * h, int64_t n_ff, int64_t row_stride, int64_t t0, int64_t t1,
                       const float * col_norm, float * inv_act, float * inv_imp) {
    stats_best().token_norms(h, n_ff, row_stride, t0, t1, col_norm, inv_act, inv_imp);
}

void stats_accumulate(const float * h, int64_t row_stride, int64_t t0, int64_t t1,
                      const float * col_norm, const float * inv_act, const float * inv_imp,
                      int64_t j0, int64_t j1, float * act_sum, float * imp_sum) {
    stats_best().accumulate(h, row_stride, t0, t1, col_norm, inv_act, inv_imp, j0, j1, act_sum, imp_sum);
}

}  // namespace glass
