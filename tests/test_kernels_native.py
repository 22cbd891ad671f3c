"""The standalone C++ kernel tests (tests/cpp), built for this machine and run.

They call every SIMD path of every glass kernel family that this CPU runs (AVX2 and AVX-512 on
x86, NEON on aarch64) and compare it with the family's scalar reference, which is itself checked
against double-precision sums; gather_matvec is checked for every ggml weight type against
ggml's own dequantization (tolerances are derived in the tests/cpp sources). The same program is
cross-built for aarch64 and run under qemu by tools/arm/cross_test.sh.

Here it links the installed llama-cpp-python's libggml-cpu / libggml-base, found the way the
glass-edge build finds them (tools/ggml_build_info.py).
"""
from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def simd_paths_this_cpu_runs() -> list[str]:
    """The kernel paths this CPU must run (the test program fails if one was not compared)."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return ["neon"]
    if machine not in ("x86_64", "amd64"):
        return []
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    paths = []
    if {"avx2", "fma"} <= flags:
        paths.append("avx2")
    if "avx512f" in flags:
        paths.append("avx512")
    if {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"} <= flags:
        paths.append("avx512vnni")
    return paths


def ggml_build_info() -> dict[str, str]:
    version = re.search(r'set\(GLASS_LLAMA_CPP_VERSION "([^"]+)"\)', (ROOT / "CMakeLists.txt").read_text()).group(1)
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "ggml_build_info.py"), "--version", version],
                         check=True, capture_output=True, text=True, timeout=600).stdout
    return dict(re.findall(r'set\((\w+) "([^"]*)"\)', out))


@pytest.fixture(scope="module")
def test_kernels_bin(tmp_path_factory) -> Path:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not on PATH (needed to build tests/cpp)")
    if sys.platform != "linux":
        pytest.skip("the native kernel test build links Linux .so files")
    info = ggml_build_info()
    lib = Path(info["GLASS_GGML_LIB_DIR"])
    build = tmp_path_factory.mktemp("kernel_tests_build")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    for cmd in (["cmake", "-S", str(ROOT / "tests" / "cpp"), "-B", str(build), *generator,
                 f"-DGLASS_GGML_INCLUDE_DIR={info['GLASS_GGML_INCLUDE_DIR']}",
                 f"-DGLASS_GGML_LIBS={lib / 'libggml-cpu.so'};{lib / 'libggml-base.so'}"],
                ["cmake", "--build", str(build), "-j", "2"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return build / "test_kernels"


def run(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=600)


def test_every_simd_path_matches_its_scalar_reference(test_kernels_bin):
    required = simd_paths_this_cpu_runs()
    args = [a for p in required for a in ("--require", p)]
    r = run(test_kernels_bin, *args)
    assert r.returncode == 0, f"kernel tests failed:\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}"
    assert re.search(r"^\d+ checks, 0 failures$", r.stdout, re.M), r.stdout
    # the summary lists each compared path with a case count
    families = {"avx512vnni": ["gather_q4k", "gather_q4_0"]}  # the families with that path
    for p in required:
        for family in families.get(p, ["down_axpy", "down_packed"]):
            assert re.search(rf"^{family}/{p}\s+[1-9]\d*\s", r.stdout, re.M), r.stdout
    for t in ("q4_0", "q4_K", "q6_K", "f16", "bf16", "iq4_nl"):
        assert re.search(rf"^gather_matvec/ggml-{t}\s+[1-9]\d*\s", r.stdout, re.M), r.stdout


def test_a_required_path_that_does_not_exist_fails_the_run(test_kernels_bin):
    """--require cannot pass vacuously: the CI's --require neon / avx2 means those paths ran."""
    r = run(test_kernels_bin, "--require", "no-such-path")
    assert r.returncode == 1
    assert "required path 'no-such-path' is not compiled" in r.stderr
