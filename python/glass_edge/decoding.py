"""Token-level decoding on a llama_cpp.Llama context, for measurements that need every row's logits.

`Llama.eval` keeps only the last row's logits unless the whole context was built with
logits_all=True, which would also make every prefill compute all rows' logits (and let the last
layer's FFN see every prompt row, changing its prefill statistics). Here the prompt is prefilled
the normal way, and only the rows evaluated through `forward` return all their logits.

`greedy_continue` generates exactly n tokens greedily (no stop at end-of-sequence), verifying
drafted tokens in batches the way speculative decoding does: the drafts are guesses looked up in
the text so far and in given sources (e.g. the dense reference); a guess is kept only where it
equals the model's own argmax, so the result is the model's greedy continuation (up to
floating-point differences between batch sizes), in fewer, larger evals.
"""
from __future__ import annotations

from typing import Optional, Sequence

import llama_cpp
import numpy as np

KEY = 3         # drafts continue an earlier occurrence of the last KEY tokens
MATCH_SLACK = 2  # ... for (matched length - MATCH_SLACK) tokens: long matches mean a loop


def context_size(llm) -> int:
    """Tokens the context can hold: llama.cpp may round n_ctx up, Llama's token buffer is not."""
    return min(llm.n_ctx(), len(llm.input_ids))


def last_logits(llm) -> np.ndarray:
    """A copy of the logits of the last row the context evaluated (e.g. the prompt's last token)."""
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def forward(llm, tokens: Sequence[int], out: Optional[np.ndarray] = None) -> np.ndarray:
    """Evaluate tokens after the llm.n_tokens already in the KV cache (dropping any cached rows
    beyond them) with the context's current masks; returns (len(tokens), n_vocab) float32 logits,
    row i predicting the token after tokens[i]."""
    tokens = [int(t) for t in tokens]
    n_vocab = llm.n_vocab()
    if out is None:
        out = np.empty((len(tokens), n_vocab), dtype=np.float32)
    if llm.n_tokens + len(tokens) > context_size(llm):
        raise ValueError(f"{llm.n_tokens} + {len(tokens)} tokens exceed the context size {context_size(llm)}")
    llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
    for lo in range(0, len(tokens), llm.n_batch):
        chunk = tokens[lo:lo + llm.n_batch]
        llm._batch.set_batch(batch=chunk, n_past=llm.n_tokens, logits_all=True)
        llm._ctx.decode(llm._batch)
        rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk) * n_vocab,))
        out[lo:lo + len(chunk)] = rows.reshape(len(chunk), n_vocab)
        llm.input_ids[llm.n_tokens:llm.n_tokens + len(chunk)] = chunk
        llm.n_tokens += len(chunk)
    return out


def _occurrences(source: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Starts of the occurrences of key in source that have at least one token after them."""
    starts = np.flatnonzero(source[:len(source) - len(key)] == key[0])
    for j in range(1, len(key)):
        starts = starts[source[starts + j] == key[j]]
    return starts


def _backward_match(a: np.ndarray, a_end: int, b: np.ndarray, b_end: int, limit: int) -> int:
    """Length of the common suffix of a[:a_end] and b[:b_end], up to limit."""
    n = min(a_end, b_end, limit)
    same = a[a_end - n:a_end][::-1] == b[b_end - n:b_end][::-1]
    return n if same.all() else int(np.argmin(same))


def lookup_draft(history: Sequence[int], sources: Sequence[Sequence[int]], k: int,
                 position: int = 0) -> list:
    """Up to k tokens guessed to follow `history`, copied from what followed an earlier occurrence
    of its last KEY tokens: the latest one in history itself, or the one nearest `position` in each
    source (sources are aligned with the generated text). The copy whose context matches the
    history furthest back wins, and it is trusted for (match length - MATCH_SLACK) tokens only:
    checking a guess costs a row of logits (the whole output head), so guesses are spent where
    the text is repeating itself. On 40 gemma-3-270m free runs of 256 tokens (one thread: an eval
    costs ~30 ms + ~10.5 ms per row) this brings greedy decoding to ~0.49 of the one-token-per-
    eval cost with k = 16 (0.52 with k = 8)."""
    if k <= 0 or len(history) <= KEY:
        return []
    hist = np.asarray(history, dtype=np.int64)
    key = hist[-KEY:]
    best_len, best = 0, []
    candidates = []
    starts = _occurrences(hist[:-1], key)
    if starts.size:
        candidates.append((hist, int(starts[-1])))
    for src in sources:
        src = np.asarray(src, dtype=np.int64)
        starts = _occurrences(src, key)
        if starts.size:
            candidates.append((src, int(starts[np.argmin(np.abs(starts + KEY - position))])))
    for src, i in candidates:
        matched = _backward_match(hist, len(hist), src, i + KEY, limit=k + MATCH_SLACK)
        if matched > best_len:
            best_len, best = matched, src[i + KEY:i + KEY + k].tolist()
            if src is hist:  # a loop of period p: its copy runs out after p tokens, so repeat it
                best = [best[j % len(best)] for j in range(k)]
    return best[:max(0, best_len - MATCH_SLACK)]


def greedy_continue(llm, generated: list, n: int, *, context: Sequence[int] = (),
                    sources: Sequence[Sequence[int]] = (), max_draft: int = 16) -> tuple:
    """Extend `generated` greedily to exactly n tokens (end-of-sequence is not special); returns
    (tokens, number of evals it took). max_draft=0 is the plain one-token-per-eval loop.

    On entry the KV cache holds the prompt and every generated token but the last (llm.n_tokens
    counts them); `context` is the prompt, used with the generated tokens for draft look-ups."""
    generated = list(generated)
    context = list(context)
    n_evals = 0
    while len(generated) < n:
        n_evals += 1
        room = n - len(generated) - 1  # drafts beyond the last wanted token are never checked
        draft = lookup_draft(context + generated, sources, min(max_draft, room), len(generated)) if room else []
        logits = forward(llm, [generated[-1]] + draft)
        predicted = logits.argmax(axis=1)
        accepted = 0
        while accepted < len(draft) and predicted[accepted] == draft[accepted]:
            accepted += 1
        generated.extend(int(t) for t in predicted[:accepted + 1])
        # rows past the first wrong guess were computed from a wrong token: drop them from the cache
        llm.n_tokens -= len(draft) - accepted
    return generated[:n], n_evals
