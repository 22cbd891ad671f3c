#!/usr/bin/env python3
"""Tell CMake where the pinned llama-cpp-python's ggml libraries and headers are.

glass-edge's plug-in implements ggml's backend vtables, which live in a private header
(ggml-backend-impl.h) that the llama-cpp-python wheel does not install. The pinned version's
source distribution on PyPI carries it, so we fetch that sdist once (checked against PyPI's
sha256), cache it, and extract only the ggml headers.

Prints CMake `set()` lines: GLASS_GGML_LIB_DIR, GLASS_GGML_INCLUDE_DIR, GLASS_GGML_IMPL_DIR.

With --ggml-source it instead extracts the sdist's whole vendored ggml tree (a CMake project, used
to cross-build ggml's CPU library for the aarch64 kernel tests, see tools/arm/cross_test.sh) and
prints its path; that mode does not need llama-cpp-python installed.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

HEADER_DIRS = ("vendor/llama.cpp/ggml/include/", "vendor/llama.cpp/ggml/src/")
GGML_TREE = "vendor/llama.cpp/ggml/"


def llama_cpp_lib_dir(version: str) -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"glass-edge build: llama-cpp-python=={version} is not installed in the build environment")
    pkg = Path(list(spec.submodule_search_locations)[0])
    from importlib.metadata import version as dist_version
    found = dist_version("llama-cpp-python")
    if found != version:
        sys.exit(f"glass-edge build: needs llama-cpp-python=={version}, found {found}")
    lib = pkg / "lib"
    if not (lib / "libggml.so").exists() and not list(lib.glob("libggml*.dylib")):
        sys.exit(f"glass-edge build: no libggml in {lib}")
    return lib


def fetch_sdist(version: str, cache: Path) -> Path:
    target = cache / f"llama_cpp_python-{version}.tar.gz"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # PyPI's simple index (PEP 691 JSON), the same one pip reads
    req = urllib.request.Request("https://pypi.org/simple/llama-cpp-python/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        files = json.load(r)["files"]
    name = f"llama_cpp_python-{version}.tar.gz"
    sdists = [f for f in files if f["filename"] == name]
    if not sdists:
        sys.exit(f"glass-edge build: PyPI lists no sdist {name}")
    url, sha = sdists[0]["url"], sdists[0]["hashes"]["sha256"]
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".part")
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=300) as r:
        while block := r.read(1 << 20):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != sha:
        os.unlink(tmp)
        sys.exit("glass-edge build: the downloaded llama-cpp-python sdist failed its sha256 check")
    os.replace(tmp, target)
    return target


def extract_headers(sdist: Path, dest: Path) -> Path:
    marker = dest / ".complete"
    if marker.exists():
        return dest
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/", 1)
            if len(parts) < 2 or not member.isfile() or not parts[1].endswith(".h"):
                continue
            rel = parts[1]
            # only the two header folders, not the per-backend subfolders
            if any(rel.startswith(d) and "/" not in rel[len(d):] for d in HEADER_DIRS):
                out = dest / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())
    marker.write_text("ok\n")
    return dest


def extract_ggml_tree(sdist: Path, dest: Path) -> Path:
    """The sdist's vendor/llama.cpp/ggml folder (regular files only) under dest; returns its path."""
    tree = dest / GGML_TREE
    if (dest / ".complete").exists():
        return tree
    # extract into a fresh temp folder, then rename: an interrupted run leaves no half tree
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=dest.name + ".part"))
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/", 1)
            if len(parts) < 2 or not member.isfile() or not parts[1].startswith(GGML_TREE):
                continue
            rel = Path(parts[1])
            if rel.is_absolute() or ".." in rel.parts:
                sys.exit(f"glass-edge build: unsafe path in the sdist: {member.name}")
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
    (tmp / ".complete").write_text("ok\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return tree


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", required=True)
    ap.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "glass-edge", "build"))
    ap.add_argument("--ggml-source", action="store_true",
                    help="extract the vendored ggml source tree and print its path (nothing else)")
    args = ap.parse_args()
    cache = Path(args.cache)
    if args.ggml_source:
        print(extract_ggml_tree(fetch_sdist(args.version, cache), cache / f"ggml-source-{args.version}"))
        return
    lib = llama_cpp_lib_dir(args.version)
    headers = extract_headers(fetch_sdist(args.version, cache), cache / f"ggml-headers-{args.version}")
    print(f'set(GLASS_GGML_LIB_DIR "{lib}")')
    print(f'set(GLASS_GGML_INCLUDE_DIR "{headers / HEADER_DIRS[0]}")')
    print(f'set(GLASS_GGML_IMPL_DIR "{headers / HEADER_DIRS[1]}")')


if __name__ == "__main__":
    main()
