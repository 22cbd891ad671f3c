// prefetch: software prefetch of a byte range, for the kernels that read scattered rows.
#pragma once

#include <cstddef>
#include <cstdint>

namespace glass {

// Asks for every cache line holding a byte of [p, p + n), into all cache levels (locality 3).
// Not the non-temporal hint: on x86 prefetchnta halved the read bandwidth of scattered rows
// (10-14 vs 23-27 GB/s, 2 threads, docs/perf.md).
inline void prefetch_range(const void * p, size_t n) {
    if (n == 0) {
        return;
    }
    const uintptr_t last = (uintptr_t) p + n - 1;
    for (uintptr_t line = (uintptr_t) p & ~(uintptr_t) 63; line <= last; line += 64) {
        __builtin_prefetch((const void *) line, 0, 3);
    }
}

}  // namespace glass
