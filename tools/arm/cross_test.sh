#!/usr/bin/env bash
# Cross-build glass's kernel tests (tests/cpp) for 64-bit ARM and run them under qemu-user.
#
# For each ARM target below: build ggml's CPU library for it from the pinned llama-cpp-python
# sdist's vendored ggml (once; cached under ~/.cache/glass-edge/arm/, keyed by version, flags and
# compiler), build tests/cpp against it, and run it under qemu-aarch64 on a CPU model of that
# class, requiring the NEON paths to be compared with the scalar references.
#
#   -march                  boards                                   qemu -cpu
#   armv8-a                 Raspberry Pi 4 (Cortex-A72)              cortex-a72
#   armv8.2-a+dotprod+fp16  Raspberry Pi 5 (Cortex-A76), Jetson      cortex-a76
#                           Orin (Cortex-A78AE) / Xavier (Carmel)
#
# Installs nothing. Needs: aarch64-linux-gnu-g++ (Debian g++-aarch64-linux-gnu), qemu-aarch64
# (qemu-user), cmake >= 3.18, python3; uses ninja when present.
# Environment: GLASS_ARM_TARGETS ("march:qemu-cpu ..." to pick targets), GLASS_ARM_JOBS (2),
# GLASS_ARM_CACHE (~/.cache/glass-edge/arm).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TARGETS="${GLASS_ARM_TARGETS:-armv8-a:cortex-a72 armv8.2-a+dotprod+fp16:cortex-a76}"
JOBS="${GLASS_ARM_JOBS:-2}"
CACHE="${GLASS_ARM_CACHE:-$HOME/.cache/glass-edge/arm}"
SYSROOT=/usr/aarch64-linux-gnu
TOOLCHAIN="$ROOT/tools/arm/aarch64-toolchain.cmake"
PYTHON="${PYTHON:-python3}"

die() { echo "cross_test.sh: $*" >&2; exit 2; }
need() { command -v "$1" >/dev/null 2>&1 || die "missing $1 (Debian package: $2)"; }
need aarch64-linux-gnu-g++ g++-aarch64-linux-gnu
need qemu-aarch64 qemu-user
need cmake cmake
need "$PYTHON" python3
[[ -d "$SYSROOT/lib" ]] || die "no aarch64 C library in $SYSROOT (Debian package: g++-aarch64-linux-gnu)"
for target in $TARGETS; do
    [[ "$target" =~ ^[^:]+:[^:]+$ ]] || die "GLASS_ARM_TARGETS entries are march:qemu-cpu, got '$target'"
done
GENERATOR="Unix Makefiles"
command -v ninja >/dev/null 2>&1 && GENERATOR=Ninja

# the llama-cpp-python version the plug-in is built against (one place: CMakeLists.txt)
VERSION="$(sed -n 's/^set(GLASS_LLAMA_CPP_VERSION "\([^"]*\)").*/\1/p' "$ROOT/CMakeLists.txt")"
[[ -n "$VERSION" ]] || die "could not read GLASS_LLAMA_CPP_VERSION from CMakeLists.txt"
GGML_SRC="$("$PYTHON" "$ROOT/tools/ggml_build_info.py" --version "$VERSION" --ggml-source)"

# Only what the tests link (ggml-base, ggml-cpu), static, no OpenMP, no llamafile sgemm.
GGML_FLAGS=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF
            -DGGML_LLAMAFILE=OFF -DGGML_CCACHE=OFF)

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Runs a command with its output in a log; shows the log's end if it fails.
logged() {
    local log="$1"; shift
    if ! "$@" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        die "failed: $* (log above)"
    fi
}

# Prints the folder holding libggml-cpu.a and libggml-base.a for one -march, building it once.
ggml_for() {
    local march="$1" key prefix build
    key="$( { echo "$VERSION $march ${GGML_FLAGS[*]}"; aarch64-linux-gnu-g++ --version | head -n 1;
              cat "$TOOLCHAIN" "$ROOT/tools/arm/ggml_static/CMakeLists.txt"; } | sha256sum | cut -c1-12)"
    prefix="$CACHE/ggml-$VERSION-${march//+/_}-$key"
    if [[ ! -f "$prefix/.complete" ]]; then
        echo "building ggml-cpu $VERSION for -march=$march (once, a few minutes; cached in $prefix)" >&2
        build="$prefix.build"
        rm -rf "$prefix" "$build"
        logged "$WORK/ggml-configure.log" cmake -S "$ROOT/tools/arm/ggml_static" -B "$build" -G "$GENERATOR" \
            -DCMAKE_TOOLCHAIN_FILE="$TOOLCHAIN" -DGLASS_GGML_SOURCE="$GGML_SRC" "${GGML_FLAGS[@]}" \
            -DGGML_CPU_ARM_ARCH="$march"
        logged "$WORK/ggml-build.log" cmake --build "$build" --target ggml-cpu ggml-base -j "$JOBS"
        mkdir -p "$prefix"
        find "$build" \( -name libggml-cpu.a -o -name libggml-base.a \) -exec cp {} "$prefix/" \;
        [[ -f "$prefix/libggml-cpu.a" && -f "$prefix/libggml-base.a" ]] || die "ggml build made no libraries"
        touch "$prefix/.complete"
        rm -rf "$build"
    fi
    echo "$prefix"
}

status=0
for target in $TARGETS; do
    march="${target%%:*}"
    cpu="${target##*:}"
    libs="$(ggml_for "$march")"
    build="$WORK/tests-${march//+/_}"
    logged "$WORK/tests-configure.log" cmake -S "$ROOT/tests/cpp" -B "$build" -G "$GENERATOR" \
        -DCMAKE_TOOLCHAIN_FILE="$TOOLCHAIN" -DGLASS_GGML_INCLUDE_DIR="$GGML_SRC/include" \
        -DGLASS_GGML_LIBS="$libs/libggml-cpu.a;$libs/libggml-base.a" -DGLASS_ARCH_FLAGS="-march=$march"
    logged "$WORK/tests-build.log" cmake --build "$build" -j "$JOBS"
    echo "== aarch64 kernel tests: -march=$march on qemu -cpu $cpu"
    if qemu-aarch64 -cpu "$cpu" -L "$SYSROOT" "$build/test_kernels" --require neon; then
        echo "== passed: -march=$march on $cpu"
    else
        echo "== FAILED: -march=$march on $cpu" >&2
        status=1
    fi
done
exit "$status"
