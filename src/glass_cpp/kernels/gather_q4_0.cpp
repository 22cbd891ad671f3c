// gather_q4_0: scalar reference and AVX-512 VNNI path of the gathered Q4_0 x Q8_0 dot products.
#include "gather_q4_0.h"
#include "prefetch.h"

#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GLASS_Q4_0_X86 1
#endif

namespace glass {

float pk_half_to_float(uint16_t h);  // down_packed.cpp

// The row three ahead is prefetched a group of blocks at a time, spread over the current row
// (gather_q4k.cpp says why).
constexpr int64_t Q4_0_PREFETCH_AHEAD = 3;  // rows
constexpr size_t Q4_0_W_GROUP_BYTES = 4 * Q4_0_BLOCK_BYTES;

struct q4_0_xgroup {
    int8_t lo[64];
    int8_t hi[64];
    float d[4];
    int32_t s8[4];
};
static_assert(sizeof(q4_0_xgroup) == Q4_0_X_GROUP_BYTES, "regrouped x layout");

void q4_0_regroup_x(const void * xq, void * xr, int64_t n) {
    const uint8_t * src = (const uint8_t *) xq;
    q4_0_xgroup * dst = (q4_0_xgroup *) xr;
    for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t * blk = src + b * Q8_0_BLOCK_BYTES;
        q4_0_xgroup & g = dst[b / 4];
        const int k = (int) (b % 4);
        uint16_t d;
        memcpy(&d, blk, 2);
        g.d[k] = pk_half_to_float(d);
        memcpy(g.lo + 16 * k, blk + 2, 16);
        memcpy(g.hi + 16 * k, blk + 18, 16);
        int32_t s = 0;
        for (int i = 0; i < 32; ++i) {
            s += (int8_t) blk[2 + i];
        }
        g.s8[k] = 8 * s;
    }
}

// ---------------------------------------------------------------------------------------------
// scalar reference
// ---------------------------------------------------------------------------------------------

static float dot_q4_0_ref(const uint8_t * w, const q4_0_xgroup * x, int64_t n_groups) {
    float sum = 0.0f;
    for (int64_t g = 0; g < n_groups; ++g) {
        for (int k = 0; k < 4; ++k) {
            const uint8_t * blk = w + (4 * g + k) * Q4_0_BLOCK_BYTES;
            uint16_t d;
            memcpy(&d, blk, 2);
            int32_t sumi = 0;
            for (int i = 0; i < 16; ++i) {
                sumi += (blk[2 + i] & 0xf) * x[g].lo[16 * k + i] + (blk[2 + i] >> 4) * x[g].hi[16 * k + i];
            }
            sum += pk_half_to_float(d) * x[g].d[k] * (float) (sumi - x[g].s8[k]);
        }
    }
    return sum;
}

void gather_q4_0_ref(const void * w, size_t w_row_stride, const int32_t * rows, int64_t n_rows,
                     const void * xr, int64_t n, float * out) {
    for (int64_t i = 0; i < n_rows; ++i) {
        const uint8_t * row = (const uint8_t *) w + rows[i] * w_row_stride;
        out[rows[i]] = dot_q4_0_ref(row, (const q4_0_xgroup *) xr, n / Q4_0_GROUP);
    }
}

// ---------------------------------------------------------------------------------------------
// x86: AVX-512 VNNI (with BW and VL), chosen at run time
// ---------------------------------------------------------------------------------------------

#if defined(GLASS_Q4_0_X86)

#define Q4_0_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")))

// ahead: a row to prefetch while this one is computed (group g's bytes during group g), or null
Q4_0_VNNI_TARGET static float dot_q4_0_vnni(const uint8_t * w, const q4_0_xgroup * x, int64_t n_groups,
                                            const uint8_t * ahead) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const __m512i spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);  // block of each lane
    __m512 acc = _mm512_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int64_t g = 0; g < n_groups; ++g) {
        const uint8_t * blk = w + g * Q4_0_W_GROUP_BYTES;
        if (ahead) {
            prefetch_range(ahead + g * Q4_0_W_GROUP_BYTES, Q4_0_W_GROUP_BYTES);
        }
        // the four blocks' codes side by side, then their low and high nibbles
        __m512i c = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *) (blk + 2)));
        c = _mm512_inserti32x4(c, _mm_loadu_si128((const __m128i *) (blk + 2 + Q4_0_BLOCK_BYTES)), 1);
        c = _mm512_inserti32x4(c, _mm_loadu_si128((const __m128i *) (blk + 2 + 2 * Q4_0_BLOCK_BYTES)), 2);
        c = _mm512_inserti32x4(c, _mm_loadu_si128((const __m128i *) (blk + 2 + 3 * Q4_0_BLOCK_BYTES)), 3);
        __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(c, m4),
                                        _mm512_loadu_si512(x[g].lo));
        p = _mm512_dpbusd_epi32(p, _mm512_and_si512(_mm512_srli_epi16(c, 4), m4), _mm512_loadu_si512(x[g].hi));

        uint16_t dh[4];
        for (int k = 0; k < 4; ++k) {
            memcpy(&dh[k], blk + k * Q4_0_BLOCK_BYTES, 2);
        }
        const __m128 dw = _mm_cvtph_ps(_mm_set_epi16(0, 0, 0, 0, (short) dh[3], (short) dh[2], (short) dh[1], (short) dh[0]));
        const __m128 dwx = _mm_mul_ps(dw, _mm_loadu_ps(x[g].d));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(dwx)), acc);
        accm = _mm_fmadd_ps(dwx, _mm_cvtepi32_ps(_mm_loadu_si128((const __m128i *) x[g].s8)), accm);
    }
    const __m128 m2 = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
    return _mm512_reduce_add_ps(acc) - _mm_cvtss_f32(_mm_add_ss(m2, _mm_movehdup_ps(m2)));
}

Q4_0_VNNI_TARGET static void gather_q4_0_vnni(const void * w, size_t w_row_stride, const int32_t * rows,
                                             int64_t n_rows, const void * xr, int64_t n, float * out) {
    const uint8_t * base = (const uint8_t *) w;
    for (int64_t i = 0; i < n_rows; ++i) {
        const uint8_t * ahead = i + Q4_0_PREFETCH_AHEAD < n_rows ? base + rows[i + Q4_0_PREFETCH_AHEAD] * w_row_stride : nullptr;
        out[rows[i]] = dot_q4_0_vnni(base + rows[i] * w_row_stride, (const q4_0_xgroup *) xr, n / Q4_0_GROUP, ahead);
    }
}

#endif

// ---------------------------------------------------------------------------------------------
// the path list
// ---------------------------------------------------------------------------------------------

const std::vector<kernel_path<gather_rows_fn>> & gather_q4_0_paths() {
    static const std::vector<kernel_path<gather_rows_fn>> paths = [] {
        const cpu_caps & cpu = cpu_caps_get();
        std::vector<kernel_path<gather_rows_fn>> p = {{"scalar", gather_q4_0_ref, true}};
#if defined(GLASS_Q4_0_X86)
        p.push_back({"avx512vnni", gather_q4_0_vnni, cpu.avx512_vnni && cpu.avx2_fma && cpu.f16c});
#endif
        (void) cpu;
        return p;
    }();
    return paths;
}

}  // namespace glass
