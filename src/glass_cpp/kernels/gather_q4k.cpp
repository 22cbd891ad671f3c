// gather_q4k: scalar reference and AVX-512 VNNI path of the gathered Q4_K x Q8_K dot products.
#include "gather_q4k.h"
#include "prefetch.h"

#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GLASS_Q4K_X86 1
#endif

namespace glass {

float pk_half_to_float(uint16_t h);  // down_packed.cpp

// The row three ahead is prefetched a block at a time, spread over the current row's blocks
// rather than in one burst per row: a burst of 18 line prefetches waits for free line-fill
// buffers (perf: half the gather's time sat on them), spread out they overlap the arithmetic
// (measured: 10-25% faster at density 0.25-0.5, 2 threads, from memory; three rows ahead a little
// better than two).
constexpr int64_t Q4K_PREFETCH_AHEAD = 3;  // rows

// ---------------------------------------------------------------------------------------------
// the two block formats (byte layouts of ggml's block_q4_K and block_q8_K)
// ---------------------------------------------------------------------------------------------

struct q4k_block {
    uint16_t d, dmin;     // fp16
    uint8_t scales[12];   // 8 sub-block scales and 8 mins, 6 bits each
    uint8_t qs[128];      // 4-bit codes
};
static_assert(sizeof(q4k_block) == Q4K_BLOCK_BYTES, "Q4_K block layout");

struct q8k_block {
    float d;
    int8_t qs[256];
    int16_t bsums[16];    // sums of 16 consecutive values (original order)
};
static_assert(sizeof(q8k_block) == Q8K_BLOCK_BYTES, "Q8_K block layout");

// Where value v of a block sits after q4k_regroup_x (see gather_q4k.h).
static inline int regrouped_pos(int v) {
    const int half = v / 128, in_half = v % 128;       // codes bytes [0, 64) or [64, 128)
    const int chunk = in_half / 64, in_chunk = in_half % 64;  // 64-value chunk of the codes
    const int nibble_hi = in_chunk / 32;               // low nibbles first 32, high next 32
    return half * 128 + nibble_hi * 64 + chunk * 32 + in_chunk % 32;
}

void q4k_regroup_x(const void * xq, void * xr, int64_t n) {
    const q8k_block * src = (const q8k_block *) xq;
    q8k_block * dst = (q8k_block *) xr;
    for (int64_t b = 0; b < n / Q4K_BLOCK; ++b) {
        dst[b].d = src[b].d;
        memcpy(dst[b].bsums, src[b].bsums, sizeof(src[b].bsums));
        for (int c = 0; c < Q4K_BLOCK; c += 32) {  // runs of 32 stay together
            memcpy(dst[b].qs + regrouped_pos(c), src[b].qs + c, 32);
        }
    }
}

// The 6-bit scales and mins of sub-blocks 0-7, four per 32-bit word: sc[0..3] | sc[4..7] and
// m[0..3] | m[4..7]. Bytes 0-3 hold scales 0-3 (and the top bits of scales 4-7), bytes 4-7 mins
// 0-3 (and the top bits of mins 4-7), bytes 8-11 the low 4 bits of scales and mins 4-7.
static inline void q4k_scales_mins(const uint8_t * s, uint32_t sc[2], uint32_t m[2]) {
    uint32_t u0, u1, u2;
    memcpy(&u0, s, 4);
    memcpy(&u1, s + 4, 4);
    memcpy(&u2, s + 8, 4);
    sc[0] = u0 & 0x3f3f3f3f;
    m[0] = u1 & 0x3f3f3f3f;
    sc[1] = (u2 & 0x0f0f0f0f) | ((u0 >> 2) & 0x30303030);
    m[1] = ((u2 >> 4) & 0x0f0f0f0f) | ((u1 >> 2) & 0x30303030);
}

// ---------------------------------------------------------------------------------------------
// scalar reference
// ---------------------------------------------------------------------------------------------

static float dot_q4k_ref(const q4k_block * w, const q8k_block * x, int64_t nb) {
    float sum = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
        uint32_t sc4[2], m4[2];
        q4k_scales_mins(w[b].scales, sc4, m4);
        uint8_t sc[8], m[8];
        memcpy(sc, sc4, 8);
        memcpy(m, m4, 8);
        int32_t sumi = 0, summ = 0;
        for (int v = 0; v < Q4K_BLOCK; ++v) {
            const int chunk = v / 64, sub = v / 32;
            const uint8_t byte = w[b].qs[32 * chunk + v % 32];
            const int q = (sub % 2 == 0) ? (byte & 0xf) : (byte >> 4);
            sumi += sc[sub] * q * x[b].qs[regrouped_pos(v)];
        }
        for (int i = 0; i < 8; ++i) {
            summ += m[i] * (x[b].bsums[2 * i] + x[b].bsums[2 * i + 1]);
        }
        sum += pk_half_to_float(w[b].d) * x[b].d * (float) sumi - pk_half_to_float(w[b].dmin) * x[b].d * (float) summ;
    }
    return sum;
}

void gather_q4k_ref(const void * w, size_t w_row_stride, const int32_t * rows, int64_t n_rows,
                    const void * xr, int64_t n, float * out) {
    for (int64_t i = 0; i < n_rows; ++i) {
        const q4k_block * row = (const q4k_block *) ((const char *) w + rows[i] * w_row_stride);
        out[rows[i]] = dot_q4k_ref(row, (const q8k_block *) xr, n / Q4K_BLOCK);
    }
}

// ---------------------------------------------------------------------------------------------
// x86: AVX-512 VNNI (with BW and VL), chosen at run time
// ---------------------------------------------------------------------------------------------

#if defined(GLASS_Q4K_X86)

#define Q4K_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

// ahead: a row to prefetch while this one is computed (block b's lines during block b), or null
Q4K_VNNI_TARGET static float dot_q4k_vnni(const q4k_block * w, const q8k_block * x, int64_t nb, const char * ahead) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    // which scale each 16-lane product uses: [sub a x 8, sub b x 8] for the four loads of a block
    const __m512i pick0 = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i pick1 = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i pick2 = _mm512_set_epi32(6, 6, 6, 6, 6, 6, 6, 6, 4, 4, 4, 4, 4, 4, 4, 4);
    const __m512i pick3 = _mm512_set_epi32(7, 7, 7, 7, 7, 7, 7, 7, 5, 5, 5, 5, 5, 5, 5, 5);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();  // two chains: FMA latency
    __m256 accm = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        if (ahead) {
            prefetch_range(ahead + b * Q4K_BLOCK_BYTES, Q4K_BLOCK_BYTES);
        }
        const float dx = x[b].d;
        const float dd = _cvtsh_ss(w[b].d) * dx, dm = _cvtsh_ss(w[b].dmin) * dx;
        uint32_t sc[2], m[2];
        q4k_scales_mins(w[b].scales, sc, m);

        // mins: m_i * (bsums[2i] + bsums[2i+1]), as 8 int32 lanes
        const __m128i mb = _mm_set_epi32(0, 0, (int) m[1], (int) m[0]);
        const __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mb, mb));  // m0 m0 m1 m1 ...
        const __m256i bs = _mm256_loadu_si256((const __m256i *) x[b].bsums);
        accm = _mm256_fmadd_ps(_mm256_set1_ps(dm), _mm256_cvtepi32_ps(_mm256_madd_epi16(bs, m16)), accm);

        // scales as floats, times d * dx
        const __m128i sb = _mm_set_epi32(0, 0, (int) sc[1], (int) sc[0]);
        const __m512 s8 = _mm512_castps256_ps512(
            _mm256_mul_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sb))));

        const __m512i c0 = _mm512_loadu_si512(w[b].qs), c1 = _mm512_loadu_si512(w[b].qs + 64);
        const __m512i p0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(c0, m4),
                                               _mm512_loadu_si512(x[b].qs));
        const __m512i p1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(_mm512_srli_epi16(c0, 4), m4),
                                               _mm512_loadu_si512(x[b].qs + 64));
        const __m512i p2 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(c1, m4),
                                               _mm512_loadu_si512(x[b].qs + 128));
        const __m512i p3 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(_mm512_srli_epi16(c1, 4), m4),
                                               _mm512_loadu_si512(x[b].qs + 192));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_permutexvar_ps(pick0, s8), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), _mm512_permutexvar_ps(pick1, s8), acc1);
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p2), _mm512_permutexvar_ps(pick2, s8), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p3), _mm512_permutexvar_ps(pick3, s8), acc1);
    }
    const __m128 m_lo = _mm_add_ps(_mm256_castps256_ps128(accm), _mm256_extractf128_ps(accm, 1));
    const __m128 m2 = _mm_add_ps(m_lo, _mm_movehl_ps(m_lo, m_lo));
    const float msum = _mm_cvtss_f32(_mm_add_ss(m2, _mm_movehdup_ps(m2)));
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) - msum;
}

Q4K_VNNI_TARGET static void gather_q4k_vnni(const void * w, size_t w_row_stride, const int32_t * rows,
                                            int64_t n_rows, const void * xr, int64_t n, float * out) {
    const char * base = (const char *) w;
    for (int64_t i = 0; i < n_rows; ++i) {
        const char * ahead = i + Q4K_PREFETCH_AHEAD < n_rows ? base + rows[i + Q4K_PREFETCH_AHEAD] * w_row_stride : nullptr;
        const q4k_block * row = (const q4k_block *) (base + rows[i] * w_row_stride);
        out[rows[i]] = dot_q4k_vnni(row, (const q8k_block *) xr, n / Q4K_BLOCK, ahead);
    }
}

#endif

// ---------------------------------------------------------------------------------------------
// the path list
// ---------------------------------------------------------------------------------------------

const std::vector<kernel_path<gather_rows_fn>> & gather_q4k_paths() {
    static const std::vector<kernel_path<gather_rows_fn>> paths = [] {
        const cpu_caps & cpu = cpu_caps_get();
        std::vector<kernel_path<gather_rows_fn>> p = {{"scalar", gather_q4k_ref, true}};
#if defined(GLASS_Q4K_X86)
        p.push_back({"avx512vnni", gather_q4k_vnni, cpu.avx512_vnni && cpu.avx2_fma && cpu.f16c});
#endif
        (void) cpu;
        return p;
    }();
    return paths;
}

}  // namespace glass
