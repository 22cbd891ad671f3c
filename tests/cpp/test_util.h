// test_util: the small harness of the standalone kernel tests (no framework, no Python).
//
// A check compares a kernel's output with a reference under a per-element tolerance. Failures are
// printed (the first few in full) and counted; main() exits non-zero if any check failed.
// Each kernel path also records how many cases it ran and its worst error/tolerance ratio, so the
// log shows which paths were really compared and how close they came to their bounds.
#pragma once

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kernels/kernel_paths.h"

namespace ktest {

// unit roundoff of float (round to nearest)
constexpr double U32 = 1.0 / (1 << 24);

struct tally_t {
    int64_t checks = 0;
    int64_t failures = 0;
};

inline tally_t & tally() {
    static tally_t t;
    return t;
}

struct path_record {
    int64_t cases = 0;
    double worst = 0.0;  // max over cases of max |out - ref| / tol
};

// "down_axpy/neon" -> record
inline std::map<std::string, path_record> & paths_run() {
    static std::map<std::string, path_record> m;
    return m;
}

inline std::string fmt(const char * f, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof(buf), f, ap);
    va_end(ap);
    return buf;
}

inline bool expect(bool ok, const std::string & what) {
    tally().checks++;
    if (!ok) {
        if (tally().failures < 30) {
            std::fprintf(stderr, "FAIL: %s\n", what.c_str());
        }
        tally().failures++;
    }
    return ok;
}

// max_i |out[i] - ref[i]| / tol[i] (> 1: out is not within tolerance); NaN anywhere counts as a miss.
struct compare_result {
    double ratio = 0.0;
    size_t worst_i = 0;
};

inline compare_result compare(const std::vector<double> & out, const std::vector<double> & ref,
                              const std::vector<double> & tol) {
    compare_result r;
    for (size_t i = 0; i < out.size(); ++i) {
        const double err = std::fabs(out[i] - ref[i]);
        const double ratio = std::isfinite(out[i]) && std::isfinite(ref[i]) ? err / tol[i] : INFINITY;
        if (!(ratio <= r.ratio)) {
            r.ratio = ratio;
            r.worst_i = i;
        }
    }
    return r;
}

// One check: out within tol of ref element-wise. path ("family/name") gets the case recorded.
inline bool expect_within(const std::string & what, const std::string & path, const std::vector<double> & out,
                          const std::vector<double> & ref, const std::vector<double> & tol) {
    const compare_result r = compare(out, ref, tol);
    if (!path.empty()) {
        path_record & rec = paths_run()[path];
        rec.cases++;
        rec.worst = std::fmax(rec.worst, r.ratio);
    }
    const bool ok = r.ratio <= 1.0;
    return expect(ok, ok ? what : fmt("%s: [%zu] = %.9g, reference %.9g, tolerance %.3g (%.3g x)", what.c_str(),
                                      r.worst_i, out[r.worst_i], ref[r.worst_i], tol[r.worst_i], r.ratio));
}

template <class T>
std::vector<double> as_double(const T * p, size_t n) {
    return std::vector<double>(p, p + n);
}

// A kernel family's path list starts with its scalar reference, and its public entry point runs
// (and names) the best path this CPU runs.
template <class Fns>
void expect_path_list(const char * family, const std::vector<glass::kernel_path<Fns>> & paths, Fns ref,
                      const char * public_path) {
    expect(std::string(paths[0].name) == "scalar" && paths[0].fns == ref,
           fmt("%s_paths()[0] is not the scalar reference", family));
    expect(std::string(public_path) == glass::kernel_path_best(paths).name,
           fmt("%s_path() does not name the best path", family));
}

// Deterministic random inputs.
struct rng {
    std::mt19937_64 g;
    explicit rng(uint64_t seed) : g(seed) {}
    double normal() { return std::normal_distribution<double>(0.0, 1.0)(g); }
    double uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(g); }
    int64_t below(int64_t n) { return std::uniform_int_distribution<int64_t>(0, n - 1)(g); }
};

// Every family registers its entry point here (see test_kernels_main.cpp).
void test_down_axpy();
void test_stats();
void test_gather_matvec();
void test_gather_fast();

}  // namespace ktest
