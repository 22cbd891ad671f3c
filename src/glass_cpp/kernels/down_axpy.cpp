// down_axpy: scalar reference and SIMD paths of the neuron-major sparse down projection.
#include "down_axpy.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#elif defined(__ARM_NEON)
#include <arm_neon.h>
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
// SIMD paths: same loop order as the reference, 32 values per block
// ---------------------------------------------------------------------------------------------

#if defined(__AVX512F__)

const char * down_axpy_path() { return "avx512"; }

void down_axpy(const nm_matrix_view & w, const int32_t * idx, int64_t k, const float * h,
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

#elif defined(__AVX2__) && defined(__FMA__)

const char * down_axpy_path() { return "avx2"; }

void down_axpy(const nm_matrix_view & w, const int32_t * idx, int64_t k, const float * h,
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

#elif defined(__ARM_NEON) && defined(__aarch64__)

const char * down_axpy_path() { return "neon"; }

void down_axpy(const nm_matrix_view & w, const int32_t * idx, int64_t k, const float * h,
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

#else

const char * down_axpy_path() { return "scalar"; }

void down_axpy(const nm_matrix_view & w, const int32_t * idx, int64_t k, const float * h,
               float * y, int64_t blk0, int64_t blk1) {
    down_axpy_ref(w, idx, k, h, y, blk0, blk1);
}

#endif

}  // namespace glass
