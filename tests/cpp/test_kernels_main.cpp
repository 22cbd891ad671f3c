// test_kernels: the glass C++ kernels against their scalar references, standalone (no Python).
//
// Built natively (tests/test_kernels_native.py: the AVX2 / AVX-512 paths) and cross-built for
// aarch64 and run under qemu-user (tools/arm/cross_test.sh: the NEON paths, ggml built for ARM).
//
//   test_kernels [--require PATH]...
//
// --require PATH fails the run unless a path of that name (e.g. neon, avx2) was compared with
// the reference in at least one kernel family, and in every family that compiled one: a CI run
// cannot pass by silently skipping the path it is meant to test.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "ggml-cpu.h"
#include "kernels/down_axpy.h"
#include "kernels/down_packed.h"
#include "kernels/gather_q4_0.h"
#include "kernels/gather_q4k.h"
#include "kernels/stats.h"
#include "test_util.h"

using namespace ktest;

namespace ktest {
void test_down_packed();  // test_down_packed.cpp
}

namespace {

void print_cpu() {
    const glass::cpu_caps & c = glass::cpu_caps_get();
    std::printf("cpu: avx2+fma=%d avx512f=%d avx512vnni=%d neon=%d dotprod=%d i8mm=%d\n", c.avx2_fma, c.avx512f,
                c.avx512_vnni, c.neon, c.dotprod, c.i8mm);
    std::printf("ggml-cpu (compiled in and present): neon=%d dotprod=%d i8mm=%d fp16_va=%d sve=%d avx2=%d avx512=%d\n",
                ggml_cpu_has_neon(), ggml_cpu_has_dotprod(), ggml_cpu_has_matmul_int8(), ggml_cpu_has_fp16_va(),
                ggml_cpu_has_sve(), ggml_cpu_has_avx2(), ggml_cpu_has_avx512());
}

struct compiled_path {
    std::string family, name;
    bool runs_here;
};

template <class Fns>
void list_paths(const char * family, const std::vector<glass::kernel_path<Fns>> & paths, std::vector<compiled_path> & out) {
    std::printf("%s paths:", family);
    for (const auto & p : paths) {
        std::printf(" %s%s", p.name, p.runs_here ? "" : " (not on this cpu)");
        out.push_back({family, p.name, p.runs_here});
    }
    std::printf("\n");
}

}  // namespace

int main(int argc, char ** argv) {
    std::vector<std::string> required;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--require") == 0 && i + 1 < argc) {
            required.push_back(argv[++i]);
        } else {
            std::fprintf(stderr, "usage: %s [--require PATH]...\n", argv[0]);
            return 2;
        }
    }
    ggml_cpu_init();  // ggml's fp16 tables, used by some dot products
    print_cpu();
    std::vector<compiled_path> compiled;
    list_paths("down_axpy", glass::down_axpy_paths(), compiled);
    list_paths("down_packed", glass::down_packed_paths(), compiled);
    list_paths("stats", glass::stats_paths(), compiled);
    list_paths("gather_q4k", glass::gather_q4k_paths(), compiled);
    list_paths("gather_q4_0", glass::gather_q4_0_paths(), compiled);

    for (const auto & [family, run] : {std::pair<const char *, void (*)()>{"down_axpy", test_down_axpy},
                                       {"down_packed", test_down_packed},
                                       {"stats", test_stats},
                                       {"gather_matvec", test_gather_matvec},
                                       {"gather_fast", test_gather_fast}}) {
        const auto t0 = std::chrono::steady_clock::now();
        const tally_t before = tally();
        run();
        std::printf("%s: %lld checks, %lld failures, %.2f s\n", family, (long long) (tally().checks - before.checks),
                    (long long) (tally().failures - before.failures),
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }

    std::printf("\n%-28s %8s %14s\n", "path", "cases", "worst err/tol");
    for (const auto & [path, rec] : paths_run()) {
        std::printf("%-28s %8lld %14.3g\n", path.c_str(), (long long) rec.cases, rec.worst);
    }
    // every path this CPU runs was compared; a required path was compiled and run in every
    // family that has it, and in at least one
    for (const auto & c : compiled) {
        const std::string key = c.family + "/" + c.name;
        if (c.runs_here) {
            expect(paths_run().count(key) && paths_run()[key].cases > 0, key + ": runs here but was never compared");
        }
    }
    for (const auto & want : required) {
        int n_run = 0;
        for (const auto & c : compiled) {
            if (c.name == want) {
                n_run += c.runs_here;
                expect(c.runs_here, c.family + "/" + want + ": required, but this CPU cannot run it");
            }
        }
        expect(n_run > 0, "required path '" + want + "' is not compiled into any kernel family");
    }
    std::printf("\n%lld checks, %lld failures\n", (long long) tally().checks, (long long) tally().failures);
    return tally().failures == 0 ? 0 : 1;
}
