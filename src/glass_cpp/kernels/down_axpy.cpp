// down_axpy: scalar reference and SIMD paths of the neuron-major sparse down projection.
//
// Every path runs the reference's loops in the reference's order (neurons in idx order, then
// output blocks, 32 values per block); only the innermost 32 values are vectorised.
#include "down_axpy.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GLASS_DOWN_X86 1
#elif defined(__aarch64__)
#include <arm_neon.h>
#define GLASS_DOWN_NEON 1
#endif

namespace glass {

// ---------------------------------------------------------------------------------------------
// scalar reference
// ---------------------------------------------------------------------------------------------

void down_axpy_ref(const nm_matrix_view & w, const int32_t * idx, int64_t k, const float * h,
                   float * y, int64_t blk0, int64_t blk1) {
    for (int64_t i = 0; i < k; ++i) {
        const int64_t j = idx[i];
        const float s = h[j];
        if (s == 0.0f) {
            continue;  // a zero activation contributes nothing: skip its bytes
        }
        const int8_t * q = w.q + j * w.n_blk * NM_BLOCK;
        const float  * d = w.d + j * w.n_blk;
        for (int64_t b = blk0; b < blk1; ++b) {
            const float sd = s * d[b];
            for (int t = 0; t < NM_BLOCK; ++t) {
                y[(b - blk0) * NM_BLOCK + t] += sd * (float) q[b * NM_BLOCK + t];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// x86: AVX-512F and AVX2+FMA (compiled in every x86 build, chosen at run time)
// ---------------------------------------------------------------------------------------------

#if defined(GLASS_DOWN_X86)

// GCC 12 warns (-Wmaybe-uninitialized) inside _mm512_cvtepi8_epi32's own _mm512_undefined_epi32()
// when the function is compiled through a target attribute; the intrinsic is fine.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f")))
static void down_axpy_avx512(const nm_matrix_view & w, const int32_t * idx, int64_t k, const float * h,
                             float * y, int64_t blk0, int64_t blk1) {
    for (int64_t i = 0; i < k; ++i) {
        const int64_t j = idx[i];
        const float s = h[j];
        if (s == 0.0f) {
            continue;
        }
        const int8_t * q = w.q + j * w.n_blk * NM_BLOCK;
        const float  * d = w.d + j * w.n_blk;
        for (int64_t b = blk0; b < blk1; ++b) {
            const __m512 sd = _mm512_set1_ps(s * d[b]);
            const __m128i q0 = _mm_loadu_si128((const __m128i *) (q + b * NM_BLOCK));
            const __m128i q1 = _mm_loadu_si128((const __m128i *) (q + b * NM_BLOCK + 16));
            float * yb = y + (b - blk0) * NM_BLOCK;
            const __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0));
            const __m512 f1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1));
            _mm512_storeu_ps(yb,      _mm512_fmadd_ps(sd, f0, _mm512_loadu_ps(yb)));
            _mm512_storeu_ps(yb + 16, _mm512_fmadd_ps(sd, f1, _mm512_loadu_ps(yb + 16)));
        }
    }
}
#pragma GCC diagnostic pop

__attribute__((target("avx2,fma")))
static void down_axpy_avx2(const nm_matrix_view & w, const int32_t * idx, int64_t k, const float * h,
                           float * y, int64_t blk0, int64_t blk1) {
    for (int64_t i = 0; i < k; ++i) {
        const int64_t j = idx[i];
        const float s = h[j];
        if (s == 0.0f) {
            continue;
        }
        const int8_t * q = w.q + j * w.n_blk * NM_BLOCK;
        const float  * d = w.d + j * w.n_blk;
        for (int64_t b = blk0; b < blk1; ++b) {
            const __m256 sd = _mm256_set1_ps(s * d[b]);
            const int8_t * qb = q + b * NM_BLOCK;
            float * yb = y + (b - blk0) * NM_BLOCK;
            for (int part = 0; part < 4; ++part) {
                const __m128i q8 = _mm_loadl_epi64((const __m128i *) (qb + 8 * part));
                const __m256  f  = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8));
                _mm256_storeu_ps(yb + 8 * part, _mm256_fmadd_ps(sd, f, _mm256_loadu_ps(yb + 8 * part)));
            }
        }
    }
}

#endif

// ---------------------------------------------------------------------------------------------
// aarch64: NEON (every AArch64 CPU has it)
// ---------------------------------------------------------------------------------------------

#if defined(GLASS_DOWN_NEON)

static void down_axpy_neon(const nm_matrix_view & w, const int32_t * idx, int64_t k, const float * h,
                           float * y, int64_t blk0, int64_t blk1) {
    for (int64_t i = 0; i < k; ++i) {
        const int64_t j = idx[i];
        const float s = h[j];
        if (s == 0.0f) {
            continue;
        }
        const int8_t * q = w.q + j * w.n_blk * NM_BLOCK;
        const float  * d = w.d + j * w.n_blk;
        for (int64_t b = blk0; b < blk1; ++b) {
            const float sd = s * d[b];
            const int8_t * qb = q + b * NM_BLOCK;
            float * yb = y + (b - blk0) * NM_BLOCK;
            for (int half = 0; half < 2; ++half) {
                // 16 int8 -> 2 x 8 int16 -> 4 x 4 int32 -> float
                const int8x16_t q16 = vld1q_s8(qb + 16 * half);
                const int16x8_t lo = vmovl_s8(vget_low_s8(q16));
                const int16x8_t hi = vmovl_s8(vget_high_s8(q16));
                const float32x4_t f0 = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo)));
                const float32x4_t f1 = vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo)));
                const float32x4_t f2 = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi)));
                const float32x4_t f3 = vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi)));
                float * yh = yb + 16 * half;
                vst1q_f32(yh,      vfmaq_n_f32(vld1q_f32(yh),      f0, sd));
                vst1q_f32(yh + 4,  vfmaq_n_f32(vld1q_f32(yh + 4),  f1, sd));
                vst1q_f32(yh + 8,  vfmaq_n_f32(vld1q_f32(yh + 8),  f2, sd));
                vst1q_f32(yh + 12, vfmaq_n_f32(vld1q_f32(yh + 12), f3, sd));
            }
        }
    }
}

#endif

// ---------------------------------------------------------------------------------------------
// the path list and the dispatch
// ---------------------------------------------------------------------------------------------

const std::vector<kernel_path<down_axpy_fn>> & down_axpy_paths() {
    static const std::vector<kernel_path<down_axpy_fn>> paths = [] {
        const cpu_caps & cpu = cpu_caps_get();
        std::vector<kernel_path<down_axpy_fn>> p = {{"scalar", down_axpy_ref, true}};
#if defined(GLASS_DOWN_X86)
        p.push_back({"avx2", down_axpy_avx2, cpu.avx2_fma});
        p.push_back({"avx512", down_axpy_avx512, cpu.avx512f});
#elif defined(GLASS_DOWN_NEON)
        p.push_back({"neon", down_axpy_neon, cpu.neon});
#endif
        (void) cpu;
        return p;
    }();
    return paths;
}

static const kernel_path<down_axpy_fn> & down_axpy_best() {
    static const kernel_path<down_axpy_fn> & best = kernel_path_best(down_axpy_paths());
    return best;
}

const char * down_axpy_path() { return down_axpy_best().name; }

void down_axpy(const nm_matrix_view & w, const int32_t * idx, int64_t k, const float * h,
               float * y, int64_t blk0, int64_t blk1) {
    down_axpy_best().fns(w, idx, k, h, y, blk0, blk1);
}

}  // namespace glass
