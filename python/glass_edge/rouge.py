"""ROUGE-L between two token sequences: the F-measure of their longest common subsequence (LCS)."""
from __future__ import annotations

from typing import Sequence


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence of a and b.

    Bit-parallel dynamic programme: one Python integer holds a whole DP row (bit j for b[j]),
    so the cost is len(a) big-integer steps instead of len(a) * len(b) Python operations.
    Bit j of `row` is 0 where the LCS of the prefix of a seen so far and b[:j+1] grows.
    """
    if not a or not b:
        return 0
    matches = {}  # symbol -> bit mask of its positions in b
    for j, x in enumerate(b):
        matches[x] = matches.get(x, 0) | (1 << j)
    full = (1 << len(b)) - 1
    row = full
    for x in a:
        m = row & matches.get(x, 0)
        row = ((row + m) | (row - m)) & full
    return len(b) - bin(row).count("1")


def rouge_l(candidate: Sequence, reference: Sequence) -> float:
    """ROUGE-L F1: 2PR / (P + R) with P = LCS / len(candidate), R = LCS / len(reference).
    Two empty sequences are identical (1.0); one empty sequence shares nothing (0.0)."""
    if not candidate and not reference:
        return 1.0
    lcs = lcs_length(candidate, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)
