"""Bytes of weights one decoded token reads, from a GGUF's own tensor sizes, and the speedup a
sparse FFN could give at most if decode were purely memory-bound.

Per token, decode reads every weight once, except the token embedding, of which it reads one row
(but when the output head is tied to token_embd, the head reads all of it). The FFN weights are
the dense blk.N.ffn_{up,gate,down}.weight tensors, the ones glass-edge sparsifies (MoE experts
are not among them). At density d the FFN part shrinks to d of its bytes:

    ideal(d) = total / (non_ffn + d * ffn)
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DecodeBytes", "decode_bytes", "FFN_WEIGHT"]

FFN_WEIGHT = re.compile(r"blk\.\d+\.ffn_(up|gate|down)\.weight")


@dataclass(frozen=True)
class DecodeBytes:
    ffn: int         # bytes of the sparsifiable FFN weights
    non_ffn: int     # every other weight read per token (attention, norms, output head, ...)
    tied_head: bool  # the output head is token_embd (counted fully in non_ffn)

    @property
    def total(self) -> int:
        return self.ffn + self.non_ffn

    @property
    def ffn_fraction(self) -> float:
        return self.ffn / self.total if self.total else 0.0

    def ideal_speedup(self, density: float) -> float:
        return self.total / (self.non_ffn + density * self.ffn)


def decode_bytes(path) -> DecodeBytes:
    """Read the tensor table of GGUF `path` (no weights are loaded); ValueError if unreadable."""
    import gguf

    try:
        tensors = gguf.GGUFReader(str(path)).tensors
    except Exception as e:  # truncated or corrupt: gguf-py fails in many ways
        raise ValueError(f"cannot read the tensor table of {path}: {type(e).__name__}: {e}") from None
    names = {t.name for t in tensors}
    tied = "output.weight" not in names
    ffn = non_ffn = 0
    for t in tensors:
        n = int(t.n_bytes)
        if FFN_WEIGHT.fullmatch(t.name):
            ffn += n
        elif t.name == "token_embd.weight" and not tied:
            non_ffn += n // int(t.shape[-1])  # one row of the n_vocab rows (ggml ne[1] = rows)
        else:
            non_ffn += n
    return DecodeBytes(ffn=ffn, non_ffn=non_ffn, tied_head=tied)
