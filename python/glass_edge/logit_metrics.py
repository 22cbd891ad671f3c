"""Per-token comparison of a sparse model's logits with the dense model's, along one token sequence.

For each position t (a row of logits over the vocabulary):
  KL(dense || sparse) = sum_v p(v) (log p(v) - log q(v))
                      = sum_v p(v) (d(v) - s(v)) + logsumexp(s) - logsumexp(d)
with d, s the dense and sparse logits and p = softmax(d). The second form needs one pass over the
sparse row for its logsumexp and one for the weighted difference, and gives exactly 0 when the two
rows are identical. Rows are processed in blocks so temporaries stay small.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_BLOCK_ROWS = 16


def logsumexp_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise log(sum(exp(x))) of a float32 matrix, accumulated in float64."""
    m = logits.max(axis=1)
    e = np.exp(logits - m[:, None])
    return np.log(e.sum(axis=1, dtype=np.float64)) + m


class DenseReference:
    """The dense model's logits along a sequence and what every comparison needs from them.

    logits: (n, n_vocab) float32, row t predicting targets[t]."""

    def __init__(self, logits: np.ndarray, targets):
        self.logits = np.ascontiguousarray(logits, dtype=np.float32)
        self.targets = np.asarray(targets, dtype=np.int64)
        if self.logits.ndim != 2 or self.targets.shape != (self.logits.shape[0],):
            raise ValueError("need one target token per row of logits")
        n = self.logits.shape[0]
        self.lse = np.empty(n)
        self.probs = np.empty_like(self.logits)
        for lo in range(0, n, _BLOCK_ROWS):
            block = self.logits[lo:lo + _BLOCK_ROWS]
            self.lse[lo:lo + _BLOCK_ROWS] = logsumexp_rows(block)
            self.probs[lo:lo + _BLOCK_ROWS] = np.exp(block - self.lse[lo:lo + _BLOCK_ROWS, None])
        self.top1 = self.logits.argmax(axis=1)
        self.target_logprob = self.logits[np.arange(n), self.targets] - self.lse


@dataclass
class Comparison:
    """Per row of the sequence."""
    kl: np.ndarray              # KL(dense || sparse) in nats, clipped at 0 against rounding
    top1: np.ndarray            # the sparse argmax equals the dense argmax
    target_logprob: np.ndarray  # sparse log-probability of the target token
    argmax: np.ndarray          # the sparse argmax


def compare(dense: DenseReference, sparse_logits: np.ndarray) -> Comparison:
    """Compare sparse logits (rows aligned with dense.logits) with the dense ones."""
    s = np.asarray(sparse_logits, dtype=np.float32)
    if s.shape != dense.logits.shape:
        raise ValueError(f"sparse logits {s.shape} do not match dense {dense.logits.shape}")
    n = s.shape[0]
    kl = np.empty(n)
    lse = np.empty(n)
    buf = np.empty((min(n, _BLOCK_ROWS), s.shape[1]), dtype=np.float32)
    for lo in range(0, n, _BLOCK_ROWS):
        hi = min(n, lo + _BLOCK_ROWS)
        b = buf[: hi - lo]
        # logsumexp of the sparse rows, in the scratch block (no full-size temporaries)
        m = s[lo:hi].max(axis=1)
        np.subtract(s[lo:hi], m[:, None], out=b)
        np.exp(b, out=b)
        lse[lo:hi] = np.log(b.sum(axis=1, dtype=np.float64)) + m
        # sum_v p(v) (d(v) - s(v))
        np.subtract(dense.logits[lo:hi], s[lo:hi], out=b)
        np.multiply(b, dense.probs[lo:hi], out=b)
        kl[lo:hi] = b.sum(axis=1, dtype=np.float64) + lse[lo:hi] - dense.lse[lo:hi]
    argmax = s.argmax(axis=1)
    return Comparison(kl=np.maximum(kl, 0.0), top1=argmax == dense.top1,
                      target_logprob=s[np.arange(n), dense.targets] - lse, argmax=argmax)
