"""llama.cpp's own quantizer (llama_model_quantize, through llama_cpp's ctypes API), quietly.

llama.cpp logs one line per tensor while quantizing; we mute the log and, if asked, turn those
lines ("[  12/ 147] blk.0.attn_q.weight ...") into progress callbacks.
"""
from __future__ import annotations

import ctypes
import os
import re

from .llama_log import llama_log_to

__all__ = ["quantize"]

_PROGRESS = re.compile(r"\[\s*(\d+)\s*/\s*(\d+)\s*\]")


def quantize(src, dst, ftype_const: str, *, pure: bool, nthread: int = 0, progress=None) -> None:
    """Quantize GGUF `src` into `dst` with LLAMA_FTYPE constant `ftype_const` (e.g.
    "LLAMA_FTYPE_MOSTLY_Q4_K_M"). pure=False gives llama.cpp's usual mix (e.g. Q6_K output head
    and some Q6_K ffn_down in Q4_K_M); pure=True gives every 2-D weight the ftype's base type.
    progress(i, total) is called as tensor i (from 1) starts. Raises RuntimeError on failure."""
    import llama_cpp  # lazily: plain F32 test models need only gguf + numpy

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_const)
    params.pure = pure
    params.nthread = nthread or min(4, os.cpu_count() or 1)

    def on_log(level, text):
        m = _PROGRESS.match(text.lstrip()) if progress is not None else None
        if m:
            progress(int(m.group(1)), int(m.group(2)))

    with llama_log_to(on_log):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc}) for {ftype_const}")
