"""Where the plain (file-layout) bytes of FFN weights that llama.cpp repacked live in memory.

With stock placement (llama.py) llama.cpp repacks Q4_0 / Q4_K / IQ4_NL FFN weights for its fast
CPU kernels, as it does for any model; the sparse kernels gather rows of the *plain* layout. With
mmap loading those bytes are still there: llama.cpp copies each repacked weight out of its own
read-only mapping of the model file and leaves that mapping in place. We find the mapping in
/proc/self/maps and each weight's offset in the GGUF header, so no byte is copied and no page is
counted twice. A weight outside llama.cpp's mapping (it unmaps the file's unused head and tail)
gets a small read-only mapping of our own.
"""
from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass, field

from .gguf_file import read_header

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


@dataclass
class _Mapping:
    start: int
    end: int
    offset: int   # file offset of start


def file_mappings(path) -> list:
    """This process's mappings of the file at `path` (any address range, any file offset)."""
    st = os.stat(path)
    dev_ino = (st.st_dev, st.st_ino)
    real = os.path.realpath(path)
    out = []
    try:
        f = open("/proc/self/maps")
    except OSError:
        return out  # no procfs (macOS): locate() maps the bytes itself
    with f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) < 5:
                continue
            addr, _perms, off, dev, ino = parts[:5]
            if int(ino) != dev_ino[1]:
                continue
            major, minor = (int(x, 16) for x in dev.split(":"))
            # overlay file systems may show the lower file's device: then the path must match
            same_path = len(parts) == 6 and parts[5].strip() == real
            if os.makedev(major, minor) != dev_ino[0] and not same_path:
                continue
            lo, hi = (int(x, 16) for x in addr.split("-"))
            out.append(_Mapping(lo, hi, int(off, 16)))
    return out


@dataclass
class PlainBytes:
    """Addresses of weights' file bytes; owns any mapping it had to make itself."""
    addresses: dict = field(default_factory=dict)         # name -> (address, n_bytes, llama's mapping?)
    _own: list = field(default_factory=list)              # (address, length) we mapped

    def close(self) -> None:
        for addr, length in self._own:
            _libc.munmap(addr, length)
        self._own.clear()

    def __del__(self):  # with the GlassLlama that holds it: its model no longer reads the bytes
        self.close()


def locate(model_path, weights) -> PlainBytes:
    """weights: [(name, n_bytes)] -> PlainBytes with every weight's address (raises ValueError
    naming a weight whose bytes cannot be found)."""
    header = read_header(model_path)
    infos = {t.name: t for t in header.tensors}
    maps = file_mappings(model_path)
    out = PlainBytes()
    for name, n_bytes in weights:
        info = infos.get(name)
        if info is None or info.n_bytes != n_bytes:
            raise ValueError(f"{name}: not in {model_path} with {n_bytes} bytes")
        pos = header.data_offset + info.offset
        hit = next((m for m in maps if m.offset <= pos and pos + n_bytes <= m.offset + (m.end - m.start)), None)
        if hit is not None:
            out.addresses[name] = (hit.start + pos - hit.offset, n_bytes, True)
            continue
        out.addresses[name] = (_map_own(out, model_path, pos, n_bytes), n_bytes, False)
    return out


def _map_own(out: PlainBytes, path, pos: int, n_bytes: int) -> int:
    start = pos // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
    length = pos + n_bytes - start
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
    finally:
        os.close(fd)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise ValueError(f"cannot map {path} at {start}: {os.strerror(ctypes.get_errno())}")
    out._own.append((addr, length))
    return addr + pos - start
