"""A small, fast GGUF header reader (and the value packer its writer side needs).

gguf's GGUFReader builds a numpy view per array element: on a 262k-token vocabulary that takes
seconds. This reader parses the header once with struct, returns numeric arrays as numpy arrays,
keeps string arrays as a count (tokenizer lists are never needed here), and remembers where each
key/value pair and the tensor-info block lie in the file, so a copy can reuse those bytes verbatim.
"""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
           U64: "<Q", I64: "<q", F64: "<d"}
_NUMPY = {U8: np.uint8, I8: np.int8, U16: np.uint16, I16: np.int16, U32: np.uint32, I32: np.int32,
          F32: np.float32, BOOL: np.bool_, U64: np.uint64, I64: np.int64, F64: np.float64}


class GGUFFormatError(ValueError):
    pass


@dataclass
class StringArray:
    """A string array left unparsed (tokenizer vocabularies): only its length."""
    count: int


@dataclass
class TensorInfo:
    name: str
    shape: tuple          # ggml order: ne[0] is the row length
    type: int             # ggml type id
    offset: int           # from the start of the data section
    n_bytes: int


@dataclass
class GGUFHeader:
    path: Path
    version: int
    kv: dict                                  # key -> python value / numpy array / StringArray
    kv_type: dict                             # key -> GGUF value type
    kv_span: dict                             # key -> (start, end) byte offsets in the file
    tensors: list = field(default_factory=list)
    tensor_info_span: tuple = (0, 0)
    alignment: int = DEFAULT_ALIGNMENT
    data_offset: int = 0
    file_size: int = 0

    @property
    def arch(self):
        return self.kv.get("general.architecture")

    def tensor(self, name):
        return next((t for t in self.tensors if t.name == name), None)


def tensor_nbytes(ggml_type: int, shape) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    n = int(np.prod(shape, dtype=np.int64))
    return n // block * size


class _Cursor:
    def __init__(self, buf, pos=0):
        self.buf, self.pos = buf, pos

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise GGUFFormatError("string runs past the end of the file")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype):
        if vtype in _SCALAR:
            return self.take(_SCALAR[vtype])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            etype, count = self.take("<I"), self.take("<Q")
            if etype in _NUMPY:
                dt = np.dtype(_NUMPY[etype]).newbyteorder("<")
                end = self.pos + count * dt.itemsize
                if end > len(self.buf):
                    raise GGUFFormatError("array runs past the end of the file")
                arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
                self.pos = end
                return arr
            if etype == STRING:
                for _ in range(count):
                    self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]
                if self.pos > len(self.buf):
                    raise GGUFFormatError("string array runs past the end of the file")
                return StringArray(count)
            raise GGUFFormatError(f"unsupported array element type {etype}")
        raise GGUFFormatError(f"unknown value type {vtype}")


def read_header(path) -> GGUFHeader:
    """Parse a GGUF file's header; raises GGUFFormatError (one-line message) on anything wrong."""
    p = Path(path)
    with p.open("rb") as f:
        size = p.stat().st_size
        if size < 24:
            raise GGUFFormatError(f"not a GGUF model file (too short): {p}")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                return _parse(p, mm, size)
            except struct.error:
                raise GGUFFormatError(f"truncated GGUF header: {p}") from None


def _parse(p, mm, size) -> GGUFHeader:
    if mm[:4] != GGUF_MAGIC:
        raise GGUFFormatError(f"not a GGUF model file: {p}")
    c = _Cursor(mm, 4)
    version = c.take("<I")
    if version < 2:
        raise GGUFFormatError(f"GGUF version {version} is too old: {p}")
    n_tensors, n_kv = c.take("<Q"), c.take("<Q")
    if n_kv > 1 << 20 or n_tensors > 1 << 24:
        raise GGUFFormatError(f"corrupt GGUF header (absurd counts): {p}")
    h = GGUFHeader(path=p, version=version, kv={}, kv_type={}, kv_span={}, file_size=size)
    for _ in range(n_kv):
        start = c.pos
        key = c.string()
        vtype = c.take("<I")
        h.kv[key] = c.value(vtype)
        h.kv_type[key] = vtype
        h.kv_span[key] = (start, c.pos)
    h.alignment = int(h.kv.get("general.alignment", DEFAULT_ALIGNMENT))
    if h.alignment <= 0 or h.alignment & (h.alignment - 1):
        raise GGUFFormatError(f"corrupt GGUF header (alignment {h.alignment}): {p}")
    ti_start = c.pos
    for _ in range(n_tensors):
        name = c.string()
        n_dims = c.take("<I")
        if n_dims > 4:
            raise GGUFFormatError(f"corrupt tensor info for {name!r}: {p}")
        shape = tuple(c.take("<Q") for _ in range(n_dims))
        ttype, offset = c.take("<I"), c.take("<Q")
        try:
            nbytes = tensor_nbytes(ttype, shape)
        except (ValueError, KeyError):
            raise GGUFFormatError(f"tensor {name!r} has an unknown type {ttype}: {p}") from None
        h.tensors.append(TensorInfo(name, shape, ttype, offset, nbytes))
    h.tensor_info_span = (ti_start, c.pos)
    h.data_offset = -(-c.pos // h.alignment) * h.alignment
    for t in h.tensors:
        if h.data_offset + t.offset + t.n_bytes > size:
            raise GGUFFormatError(f"truncated GGUF file (tensor {t.name} runs past the end): {p}")
    return h


# ----------------------------------------------------------------------------------------------
# packing key/value pairs (for writing)
# ----------------------------------------------------------------------------------------------

def _pack_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def pack_kv(key: str, value, vtype: int, elem_type: int = None) -> bytes:
    out = _pack_string(key) + struct.pack("<I", vtype)
    if vtype in _SCALAR:
        return out + struct.pack(_SCALAR[vtype], value)
    if vtype == STRING:
        return out + _pack_string(value)
    if vtype == ARRAY and elem_type in _NUMPY:
        arr = np.ascontiguousarray(value, dtype=np.dtype(_NUMPY[elem_type]).newbyteorder("<"))
        return out + struct.pack("<IQ", elem_type, arr.size) + arr.tobytes()
    raise ValueError(f"cannot pack {key!r} as type {vtype}/{elem_type}")
