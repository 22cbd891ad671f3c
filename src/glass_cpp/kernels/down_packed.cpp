// down_packed: scalar reference and SIMD paths of the packed (original bit width) sparse down.
//
// One driver loop (run_path) walks the kept neurons group by group for every path; a path only
// supplies how to turn one block of 32 codes into floats and add h_j times them to the group's
// accumulator, and how to apply a group's scales to the output. Every path adds the same terms
// in the same order as the reference.
#include "down_packed.h"
#include "prefetch.h"

#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GLASS_PK_X86 1
#elif defined(__aarch64__)
#include <arm_neon.h>
#define GLASS_PK_NEON 1
#endif

namespace glass {

float pk_half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t) (h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (man << 13);  // inf / nan
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  // subnormal half: normalise
        int e = -1;
        do {
            ++e;
            man <<= 1;
        } while ((man & 0x400) == 0);
        bits = sign | ((uint32_t) (112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

// ---------------------------------------------------------------------------------------------
// the driver shared by every path
// ---------------------------------------------------------------------------------------------

// One group's scale rows, from the first output of the range on.
struct scale_rows {
    const uint16_t * da;
    const int8_t   * sa;  // null: 1
    const uint16_t * db;  // null: no offset
    const int8_t   * sb;
};

// ---------------------------------------------------------------------------------------------
// ---------------------------------------------------------------------------------------------

// How far ahead (in kept neurons) the next rows are prefetched: scattered rows otherwise stall
// on memory latency at each row start (measured: +25-30% gathered bandwidth on one core).
constexpr int64_t PREFETCH_AHEAD = 2;


// P provides: template <bool FIRST> static void add_block(pk_codes, const uint8_t * q, float s, float * acc)
//             static void flush(const scale_rows & r, const float * acc, float zh, float hsum,
//                               float * y, int64_t n)
template <class P>
static void run_path(const packed_view & w, const int32_t * idx, int64_t k, const float * h,
                     float * y, int64_t blk0, int64_t blk1, float * acc) {
    const int bb = pk_block_bytes(w.code);
    const size_t row_bytes = (size_t) w.n_blk * bb;
    const int64_t nb = blk1 - blk0;
    const size_t range_bytes = (size_t) nb * bb;
    int64_t i = 0;
    while (i < k) {
        const int64_t g = idx[i] / w.group;
        float hsum = 0.0f;
        bool any = false;
        for (; i < k && idx[i] / w.group == g; ++i) {
            if (i + PREFETCH_AHEAD < k) {
                prefetch_range(w.codes + idx[i + PREFETCH_AHEAD] * row_bytes + blk0 * bb, range_bytes);
            }
            const float s = h[idx[i]];
            if (s == 0.0f) {
                continue;  // contributes nothing: skip its bytes
            }
            const uint8_t * q = w.codes + idx[i] * row_bytes + blk0 * bb;
            if (any) {
                for (int64_t blk = 0; blk < nb; ++blk) {
                    P::template add_block<false>(w.code, q + blk * bb, s, acc + blk * PK_BLOCK);
                }
            } else {
                for (int64_t blk = 0; blk < nb; ++blk) {
                    P::template add_block<true>(w.code, q + blk * bb, s, acc + blk * PK_BLOCK);
                }
            }
            hsum += s;
            any = true;
        }
        if (any) {
            const int64_t og = g * w.n_embd + blk0 * PK_BLOCK;
            const int64_t os = (g * w.group / w.super) * w.n_embd + blk0 * PK_BLOCK;
            const scale_rows r = {w.da + os, w.sa ? w.sa + og : nullptr, w.db ? w.db + os : nullptr,
                                  w.db ? w.sb + og : nullptr};
            P::flush(r, acc, (float) w.zero * hsum, hsum, y, nb * PK_BLOCK);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// scalar reference
// ---------------------------------------------------------------------------------------------

static inline int code_at(pk_codes c, const uint8_t * q, int t) {
    switch (c) {
        case pk_codes::u4:
            return t < 16 ? (q[t] & 0xf) : (q[t - 16] >> 4);
        case pk_codes::u6: {
            const int lo = t < 16 ? (q[t] & 0xf) : (q[t - 16] >> 4);
            const int hi = (q[16 + (t & 7)] >> (2 * (t >> 3))) & 3;
            return lo | (hi << 4);
        }
        case pk_codes::s8:
        default:
            return (int8_t) q[t];
    }
}

struct path_scalar {
    template <bool FIRST>
    static void add_block(pk_codes c, const uint8_t * q, float s, float * acc) {
        for (int t = 0; t < PK_BLOCK; ++t) {
            const float v = s * (float) code_at(c, q, t);
            acc[t] = FIRST ? v : acc[t] + v;
        }
    }
    static void flush(const scale_rows & r, const float * acc, float zh, float hsum, float * y, int64_t n) {
        for (int64_t o = 0; o < n; ++o) {
            const float a = pk_half_to_float(r.da[o]) * (r.sa ? (float) r.sa[o] : 1.0f);
            y[o] += a * (acc[o] - zh);
            if (r.db) {
                y[o] -= pk_half_to_float(r.db[o]) * (float) r.sb[o] * hsum;
            }
        }
    }
};

void down_packed_axpy_ref(const packed_view & w, const int32_t * idx, int64_t k, const float * h,
                          float * y, int64_t blk0, int64_t blk1, float * acc) {
    run_path<path_scalar>(w, idx, k, h, y, blk0, blk1, acc);
}

// ---------------------------------------------------------------------------------------------
// x86: AVX2+FMA+F16C and AVX-512F (chosen at run time)
// ---------------------------------------------------------------------------------------------

#if defined(GLASS_PK_X86)

// 32 codes as 16-byte halves: lo = outputs 0-15, hi = outputs 16-31 (u4/u6 only)
#define PK_X86_TARGET_128 __attribute__((target("avx2,fma,f16c")))

PK_X86_TARGET_128 static inline void split_u4(const uint8_t * q, __m128i & lo, __m128i & hi) {
    const __m128i m4 = _mm_set1_epi8(0x0f);
    const __m128i v = _mm_loadu_si128((const __m128i *) q);
    lo = _mm_and_si128(v, m4);
    hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
}

PK_X86_TARGET_128 static inline void split_u6(const uint8_t * q, __m128i & lo, __m128i & hi) {
    split_u4(q, lo, hi);
    // byte t of the 8 high-bit bytes holds outputs t, t+8, t+16, t+24 in bits 0-1, 2-3, 4-5, 6-7.
    // With those 8 bytes in both 64-bit halves, one shift per half brings each output's pair to
    // bits 4-5 of its own byte (lo: <<4 | <<2, hi: as is | >>2); bits that cross into a
    // neighbouring byte are masked off. Measured 5-15% faster cold than spreading by unpacking.
    const __m128i m30 = _mm_set1_epi8(0x30);
    int64_t b;
    memcpy(&b, q + 16, sizeof(b));
    const __m128i hb = _mm_set1_epi64x(b);
    lo = _mm_or_si128(lo, _mm_and_si128(_mm_sllv_epi64(hb, _mm_set_epi64x(2, 4)), m30));
    hi = _mm_or_si128(hi, _mm_and_si128(_mm_srlv_epi64(hb, _mm_set_epi64x(2, 0)), m30));
}

struct path_avx2 {
    template <bool FIRST>
    __attribute__((target("avx2,fma,f16c"))) static void add_block(pk_codes c, const uint8_t * q, float s, float * acc) {
        __m256 f[4];
        if (c == pk_codes::s8) {
            for (int p = 0; p < 4; ++p) {
                f[p] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *) (q + 8 * p))));
            }
        } else {
            __m128i lo, hi;
            if (c == pk_codes::u4) {
                split_u4(q, lo, hi);
            } else {
                split_u6(q, lo, hi);
            }
            f[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
            f[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
            f[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
            f[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
        }
        const __m256 vs = _mm256_set1_ps(s);
        for (int p = 0; p < 4; ++p) {
            const __m256 r = FIRST ? _mm256_mul_ps(vs, f[p]) : _mm256_fmadd_ps(vs, f[p], _mm256_loadu_ps(acc + 8 * p));
            _mm256_storeu_ps(acc + 8 * p, r);
        }
    }
    __attribute__((target("avx2,fma,f16c"))) static inline __m256 scale8(const uint16_t * d, const int8_t * s) {
        const __m256 vd = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) d));
        return s ? _mm256_mul_ps(vd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *) s)))) : vd;
    }
    __attribute__((target("avx2,fma,f16c")))
    static void flush(const scale_rows & sr, const float * acc, float zh, float hsum, float * y, int64_t n) {
        const __m256 vzh = _mm256_set1_ps(zh), vh = _mm256_set1_ps(hsum);
        for (int64_t o = 0; o < n; o += 8) {
            const __m256 va = scale8(sr.da + o, sr.sa ? sr.sa + o : nullptr);
            __m256 r = _mm256_fmadd_ps(va, _mm256_sub_ps(_mm256_loadu_ps(acc + o), vzh), _mm256_loadu_ps(y + o));
            if (sr.db) {
                r = _mm256_fnmadd_ps(scale8(sr.db + o, sr.sb + o), vh, r);
            }
            _mm256_storeu_ps(y + o, r);
        }
    }
};

// GCC 12 warns (-Wmaybe-uninitialized) inside the AVX-512 widening intrinsics' own
// _mm512_undefined_epi32() when compiled through a target attribute; the intrinsics are fine.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
struct path_avx512 {
    template <bool FIRST>
    __attribute__((target("avx512f,avx2,fma,f16c"))) static void add_block(pk_codes c, const uint8_t * q, float s, float * acc) {
        __m512 f0, f1;
        if (c == pk_codes::s8) {
            f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) q)));
            f1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) (q + 16))));
        } else {
            __m128i lo, hi;
            if (c == pk_codes::u4) {
                split_u4(q, lo, hi);
            } else {
                split_u6(q, lo, hi);
            }
            f0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo));
            f1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi));
        }
        const __m512 vs = _mm512_set1_ps(s);
        if (FIRST) {
            _mm512_storeu_ps(acc, _mm512_mul_ps(vs, f0));
            _mm512_storeu_ps(acc + 16, _mm512_mul_ps(vs, f1));
        } else {
            _mm512_storeu_ps(acc, _mm512_fmadd_ps(vs, f0, _mm512_loadu_ps(acc)));
            _mm512_storeu_ps(acc + 16, _mm512_fmadd_ps(vs, f1, _mm512_loadu_ps(acc + 16)));
        }
    }
    __attribute__((target("avx512f,avx2,fma,f16c"))) static inline __m512 scale16(const uint16_t * d, const int8_t * s) {
        const __m512 vd = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) d));
        return s ? _mm512_mul_ps(vd, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *) s)))) : vd;
    }
    __attribute__((target("avx512f,avx2,fma,f16c")))
    static void flush(const scale_rows & sr, const float * acc, float zh, float hsum, float * y, int64_t n) {
        const __m512 vzh = _mm512_set1_ps(zh), vh = _mm512_set1_ps(hsum);
        for (int64_t o = 0; o < n; o += 16) {
            const __m512 va = scale16(sr.da + o, sr.sa ? sr.sa + o : nullptr);
            __m512 r = _mm512_fmadd_ps(va, _mm512_sub_ps(_mm512_loadu_ps(acc + o), vzh), _mm512_loadu_ps(y + o));
            if (sr.db) {
                r = _mm512_fnmadd_ps(scale16(sr.db + o, sr.sb + o), vh, r);
            }
            _mm512_storeu_ps(y + o, r);
        }
    }
};
#pragma GCC diagnostic pop

__attribute__((target("avx2,fma,f16c")))
static void down_packed_avx2(const packed_view & w, const int32_t * idx, int64_t k, const float * h,
                             float * y, int64_t blk0, int64_t blk1, float * acc) {
    run_path<path_avx2>(w, idx, k, h, y, blk0, blk1, acc);
}

__attribute__((target("avx512f,avx2,fma,f16c")))
static void down_packed_avx512(const packed_view & w, const int32_t * idx, int64_t k, const float * h,
                               float * y, int64_t blk0, int64_t blk1, float * acc) {
    run_path<path_avx512>(w, idx, k, h, y, blk0, blk1, acc);
}

#endif

// ---------------------------------------------------------------------------------------------
// aarch64: NEON (every AArch64 CPU has it, fp16 conversion included)
// ---------------------------------------------------------------------------------------------

#if defined(GLASS_PK_NEON)

static inline void neon_split(pk_codes c, const uint8_t * q, uint8x16_t & lo, uint8x16_t & hi) {
    const uint8x16_t v = vld1q_u8(q);
    lo = vandq_u8(v, vdupq_n_u8(0x0f));
    hi = vshrq_n_u8(v, 4);
    if (c == pk_codes::u6) {
        // as on x86: the 8 high-bit bytes in both 64-bit halves, one shift per half moves each
        // output's pair to bits 4-5 of its byte (negative counts shift right)
        const uint64x2_t hb = vld1q_dup_u64((const uint64_t *) (q + 16));
        const uint8x16_t m30 = vdupq_n_u8(0x30);
        const int64x2_t sh_lo = vcombine_s64(vdup_n_s64(4), vdup_n_s64(2));
        const int64x2_t sh_hi = vcombine_s64(vdup_n_s64(0), vdup_n_s64(-2));
        lo = vorrq_u8(lo, vandq_u8(vreinterpretq_u8_u64(vshlq_u64(hb, sh_lo)), m30));
        hi = vorrq_u8(hi, vandq_u8(vreinterpretq_u8_u64(vshlq_u64(hb, sh_hi)), m30));
    }
}

// 16 unsigned bytes -> 4 x 4 floats
static inline void neon_u8_to_f32(uint8x16_t v, float32x4_t * f) {
    const uint16x8_t l = vmovl_u8(vget_low_u8(v)), h = vmovl_u8(vget_high_u8(v));
    f[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(l)));
    f[1] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(l)));
    f[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(h)));
    f[3] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(h)));
}

struct path_neon {
    template <bool FIRST>
    static void add_block(pk_codes c, const uint8_t * q, float s, float * acc) {
        float32x4_t f[8];
        if (c == pk_codes::s8) {
            for (int half = 0; half < 2; ++half) {
                const int8x16_t v = vld1q_s8((const int8_t *) q + 16 * half);
                const int16x8_t l = vmovl_s8(vget_low_s8(v)), h = vmovl_s8(vget_high_s8(v));
                f[4 * half + 0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(l)));
                f[4 * half + 1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(l)));
                f[4 * half + 2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(h)));
                f[4 * half + 3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(h)));
            }
        } else {
            uint8x16_t lo, hi;
            neon_split(c, q, lo, hi);
            neon_u8_to_f32(lo, f);
            neon_u8_to_f32(hi, f + 4);
        }
        for (int p = 0; p < 8; ++p) {
            const float32x4_t r = FIRST ? vmulq_n_f32(f[p], s) : vfmaq_n_f32(vld1q_f32(acc + 4 * p), f[p], s);
            vst1q_f32(acc + 4 * p, r);
        }
    }
    static inline float32x4_t scale4(const uint16_t * d, const int8_t * s) {
        const float32x4_t vd = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(d)));
        if (!s) {
            return vd;
        }
        uint32_t four;
        memcpy(&four, s, sizeof(four));  // exactly 4 bytes: the table may end here
        const int16x8_t s16 = vmovl_s8(vreinterpret_s8_u32(vdup_n_u32(four)));
        return vmulq_f32(vd, vcvtq_f32_s32(vmovl_s16(vget_low_s16(s16))));
    }
    static void flush(const scale_rows & sr, const float * acc, float zh, float hsum, float * y, int64_t n) {
        const float32x4_t vzh = vdupq_n_f32(zh), vh = vdupq_n_f32(hsum);
        for (int64_t o = 0; o < n; o += 4) {
            const float32x4_t va = scale4(sr.da + o, sr.sa ? sr.sa + o : nullptr);
            float32x4_t r = vfmaq_f32(vld1q_f32(y + o), va, vsubq_f32(vld1q_f32(acc + o), vzh));
            if (sr.db) {
                r = vfmsq_f32(r, scale4(sr.db + o, sr.sb + o), vh);
            }
            vst1q_f32(y + o, r);
        }
    }
};

static void down_packed_neon(const packed_view & w, const int32_t * idx, int64_t k, const float * h,
                             float * y, int64_t blk0, int64_t blk1, float * acc) {
    run_path<path_neon>(w, idx, k, h, y, blk0, blk1, acc);
}

#endif

// ---------------------------------------------------------------------------------------------
// the path list and the dispatch
// ---------------------------------------------------------------------------------------------

const std::vector<kernel_path<down_packed_fn>> & down_packed_paths() {
    static const std::vector<kernel_path<down_packed_fn>> paths = [] {
        const cpu_caps & cpu = cpu_caps_get();
        std::vector<kernel_path<down_packed_fn>> p = {{"scalar", down_packed_axpy_ref, true}};
#if defined(GLASS_PK_X86)
        p.push_back({"avx2", down_packed_avx2, cpu.avx2_fma && cpu.f16c});
        p.push_back({"avx512", down_packed_avx512, cpu.avx512f && cpu.avx2_fma && cpu.f16c});
#elif defined(GLASS_PK_NEON)
        p.push_back({"neon", down_packed_neon, cpu.neon});
#endif
        (void) cpu;
        return p;
    }();
    return paths;
}

static const kernel_path<down_packed_fn> & down_packed_best() {
    static const kernel_path<down_packed_fn> & best = kernel_path_best(down_packed_paths());
    return best;
}

const char * down_packed_path() { return down_packed_best().name; }

void down_packed_axpy(const packed_view & w, const int32_t * idx, int64_t k, const float * h,
                      float * y, int64_t blk0, int64_t blk1, float * acc) {
    down_packed_best().fns(w, idx, k, h, y, blk0, blk1, acc);
}

}  // namespace glass
