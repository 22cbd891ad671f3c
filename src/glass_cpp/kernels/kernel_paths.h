// kernel_paths: which SIMD paths a kernel family has, and which one this CPU runs.
//
// Each kernel family (down_axpy, stats, ...) compiles a scalar reference plus every SIMD path the
// compiler can emit for the target architecture:
//   x86-64   AVX2+FMA and AVX-512F (VNNI for gather_q4k), through function target attributes, so a build without
//            -march flags still carries them; the CPU is asked at run time (laptops lack
//            AVX-512, some VMs hide it).
//   aarch64  NEON (ASIMD), which every AArch64 CPU has (Raspberry Pi 4/5, Jetson): no check.
// The family's public function uses the last path of its list that this CPU runs; the tests call
// every path and compare it with the reference.
//
// dotprod (ARMv8.2 SDOT: Pi 5, Jetson Orin/Xavier, not Pi 4) and i8mm (ARMv8.6 SMMLA) are
// detected and reported, but no glass kernel has a path for them: the down projection is a float
// AXPY of integer codes (down_packed, down_axpy), and the statistics are float sums, so there is
// no int8 dot product in them yet. The int8 dot products of up/gate are ggml's (gather_matvec),
// compiled for the CPU ggml was built for, except Q4_K on x86 CPUs with AVX-512 VNNI, which has
// its own 512-bit path (gather_q4k: ggml's Q4_K kernel there is 256-bit AVX2).
#pragma once

#include <cstddef>
#include <vector>

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace glass {

struct cpu_caps {
    bool avx2_fma = false;  // x86 AVX2 and FMA3
    bool avx512f  = false;  // x86 AVX-512 Foundation
    bool f16c     = false;  // x86 half <-> float conversions
    bool avx512_vnni = false;  // x86 AVX-512 VNNI with BW and VL (int8 dot products, 512 bits)
    bool neon     = false;  // aarch64 ASIMD
    bool dotprod  = false;  // aarch64 SDOT/UDOT (reported only, see above)
    bool i8mm     = false;  // aarch64 SMMLA (reported only)
};

inline cpu_caps cpu_caps_detect() {
    cpu_caps c;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    // __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0)
    c.avx2_fma = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    c.avx512f  = __builtin_cpu_supports("avx512f");
    c.f16c     = c.avx2_fma;  // F16C predates AVX2 (Ivy Bridge): every AVX2 CPU has it
    c.avx512_vnni = c.avx512f && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512vnni");
#elif defined(__aarch64__)
    c.neon = true;
#if defined(__linux__)
    // bit numbers of the Linux arm64 ABI (asm/hwcap.h), spelled out for older C libraries
    const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
    c.dotprod = (hw & (1UL << 20)) != 0;   // HWCAP_ASIMDDP
    c.i8mm    = (hw2 & (1UL << 13)) != 0;  // HWCAP2_I8MM
#endif
#endif
    return c;
}

// Detected once per process.
inline const cpu_caps & cpu_caps_get() {
    static const cpu_caps caps = cpu_caps_detect();
    return caps;
}

// One compiled path of a kernel family. Fns is the family's function (or struct of functions).
template <class Fns>
struct kernel_path {
    const char * name;  // "scalar", "avx2", "avx512", "neon"
    Fns fns;
    bool runs_here;     // this CPU has the instructions the path uses
};

// The last path of the list that this CPU runs (lists go from the reference to the best).
template <class Fns>
const kernel_path<Fns> & kernel_path_best(const std::vector<kernel_path<Fns>> & paths) {
    for (std::size_t i = paths.size(); i-- > 1;) {
        if (paths[i].runs_here) {
            return paths[i];
        }
    }
    return paths.front();
}

// The best path's functions, or null when this CPU runs only the scalar reference: for families
// whose caller has a fast fallback of its own (the gathers: ggml's dot products).
template <class Fns>
Fns kernel_path_fast(const std::vector<kernel_path<Fns>> & paths) {
    const kernel_path<Fns> & best = kernel_path_best(paths);
    return &best == &paths.front() ? nullptr : best.fns;
}

}  // namespace glass
