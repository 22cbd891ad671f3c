"""Measure the two prefill-statistics decisions of docs/prefill-statistics.md on a real model.

1. The last layer. During a prefill llama.cpp drops every row but the output rows before the last
   layer's FFN, so (logits for the last token only) its statistics come from one token. Variants of
   its mask, the other layers always griffin from the whole prompt:
     one_row     griffin from that one row (what GlassLlama does)
     full_rows   griffin from every prompt row (a prefill with logits for all rows keeps them)
     dense_last  the last layer kept dense (higher average density)
     dense_eq    the last layer dense, the others thinner, so the kept-neuron total is the same
     prior_last  the global prior's activation ranking (with --prior; computes/caches it)
   Each is scored by KL(dense || sparse) and top-1 agreement along the dense model's greedy
   continuation, teacher-forced in one batch (the masks apply to any batch size).
2. Prefix reuse. The prompt's statistics summed over prefills of a few tokens each (each reusing
   the cached tokens before it) against one prefill of the whole prompt, and against one prefill
   whose n_batch makes the same batches: how close the sums are in the layers before the last,
   and how much the masks agree.

usage: PYTHONPATH=python python tools/measure_last_layer.py [MODEL] [--densities 0.4,0.5]
           [--tokens 64] [--threads 1] [--prompts 8] [--prior] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from glass_edge import GlassLlama
from glass_edge.default_model import default_model_path
from glass_edge.selection import n_keep, select, top_k_by_rank_score

PROMPTS = [
    "The old lighthouse keeper climbed the stairs one last time and",
    "Here is a simple recipe for bread that anyone can bake at home:",
    "In 1969, the first humans landed on the Moon. The mission",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three most important things to know about photosynthesis are",
    "Dear hiring manager, I am writing to apply for the position of",
    "Rivers shape the land around them in several ways. First,",
    "Once upon a time, in a village at the edge of a great forest,",
]


REUSE_PIECE = 5  # prefix-reuse check: the prompt is prefilled this many tokens at a time


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kl_and_top1(dense: np.ndarray, sparse: np.ndarray):
    """Per-row KL(dense || sparse) in nats and top-1 agreement."""
    ld, ls = log_softmax(dense), log_softmax(sparse)
    kl = np.maximum((np.exp(ld) * (ld - ls)).sum(-1), 0.0)
    return kl, dense.argmax(-1) == sparse.argmax(-1)


def teacher_forced(llm: GlassLlama, n_prompt: int, cont, masks) -> np.ndarray:
    """Logits after each continuation token, evaluated in one batch after the cached prompt."""
    llm.n_tokens = n_prompt          # eval() drops the KV cells past the prompt
    if masks is None:
        llm.clear_masks()
    else:
        llm.install_masks(masks)
    llm.eval(cont)
    return np.array(llm.scores[n_prompt: n_prompt + len(cont)], dtype=np.float32)


def dense_greedy(llm: GlassLlama, prompt, n: int):
    llm.reset()
    llm.clear_masks()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    return out


def griffin(d, n_ff, act, rows):
    return select("griffin", d, n_ff=n_ff, local_act=act, local_rows=rows)


def variants(d: float, n_ff, one, full, prior):
    """Per variant, the per-layer masks; `one`/`full`: (act, rows) from the two prefills."""
    last = len(n_ff) - 1
    base = griffin(d, n_ff, *one)
    out = {"one_row": base,
           "full_rows": base[:last] + griffin(d, n_ff, *full)[last:],
           "dense_last": base[:last] + [None]}
    # the same total of kept neurons with the last layer dense: the others give up n_ff[last]
    total = sum(n_keep(d, nf) for nf in n_ff)
    d_eq = (total - n_ff[last]) / sum(n_ff[:last])
    out["dense_eq"] = griffin(d_eq, n_ff, *one)[:last] + [None]
    if prior is not None:
        out["prior_last"] = base[:last] + [top_k_by_rank_score(prior.act_rank[last], n_keep(d, n_ff[last]))]
    return out


def mean_density(masks, n_ff) -> float:
    return float(np.mean([1.0 if m is None else len(m) / nf for m, nf in zip(masks, n_ff)]))


def _rel(a, b):
    """sum_j |a_j - b_j| / sum_j b_j: single neurons near 0 have no useful relative error."""
    return float(np.abs(a - b).sum() / b.sum())


def prefix_reuse_check(src: GlassLlama, chunked: GlassLlama, prompt, d: float, piece: int):
    """The prompt's statistics three ways, in the layers before the last:
      whole   one prefill of the whole prompt (one llama.cpp batch);
      reused  prefills of `piece` tokens each, every one reusing the cached tokens before it;
      chunked one prefill by a context whose n_batch is `piece` (the same batches, no reuse).
    reused vs chunked isolates the reuse rule; chunked vs whole is llama.cpp's own batch-size
    dependence of the numerics."""
    n_ff = src.ffn_widths
    last = len(n_ff) - 1

    def prefilled(llm, parts):
        llm.reset()
        for part in parts:
            llm.prefill(part)
        return [a.copy() for a in llm._stats_act], list(llm._stats_rows)

    whole = prefilled(src, [prompt])
    reused = prefilled(src, [prompt[i:i + piece] for i in range(0, len(prompt), piece)])
    chunked_ = prefilled(chunked, [prompt])
    assert reused[1][:last] == whole[1][:last] == chunked_[1][:last], (reused[1], whole[1], chunked_[1])
    mw, mr = griffin(d, n_ff, *whole), griffin(d, n_ff, *reused)
    overlap = [np.intersect1d(a, b).size / len(a) for a, b in zip(mr, mw)]
    return {"reused_vs_chunked": max(_rel(r, c) for r, c in zip(reused[0][:last], chunked_[0][:last])),
            "reused_vs_whole": max(_rel(r, w) for r, w in zip(reused[0][:last], whole[0][:last])),
            "layers_identical_masks": int(sum(np.array_equal(a, b) for a, b in zip(mr[:last], mw[:last]))),
            "layers": last, "min_overlap_before_last": float(min(overlap[:last])),
            "last_layer_overlap": float(overlap[last]),
            "rows_last": [int(whole[1][last]), int(reused[1][last])]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="GGUF model (default: gemma-3-270m)")
    ap.add_argument("--densities", default="0.4,0.5")
    ap.add_argument("--tokens", type=int, default=64)
    # one thread by default: on a busy shared machine ggml's spinning thread barriers make 2
    # threads several times slower; the figures do not depend on it
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prior", action="store_true", help="add the prior_last variant (computes the prior if needed)")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="use the first N prompts")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    model = args.model or str(default_model_path())
    densities = [float(x) for x in args.densities.split(",")]
    kw = dict(method="griffin", density=0.5, n_ctx=512, n_batch=512, n_threads=args.threads,
              n_threads_batch=args.threads, verbose=False)
    src = GlassLlama(model, logits_all=False, **kw)   # prefill as in generation: one output row
    ev = GlassLlama(model, logits_all=True, **kw)     # every row: teacher forcing and full-row stats
    chunked = GlassLlama(model, logits_all=False, **{**kw, "n_batch": REUSE_PIECE, "n_ubatch": REUSE_PIECE})
    n_ff = ev.ffn_widths
    prior = ev.global_prior() if args.prior else None

    t0 = time.time()
    kl = {d: {} for d in densities}
    top1 = {d: {} for d in densities}
    dens = {d: {} for d in densities}
    reuse = []
    prompts = PROMPTS[: args.prompts]
    for i, text in enumerate(prompts):
        prompt = ev.tokenize(text.encode())
        cont = dense_greedy(ev, prompt, args.tokens)
        src.reset()
        src.prefill(prompt)
        one = ([a.copy() for a in src._stats_act], list(src._stats_rows))
        ev.reset()
        ev.prefill(prompt)
        full = ([a.copy() for a in ev._stats_act], list(ev._stats_rows))
        dense = teacher_forced(ev, len(prompt), cont, None)
        for d in densities:
            for name, masks in variants(d, n_ff, one, full, prior).items():
                k, t = kl_and_top1(dense, teacher_forced(ev, len(prompt), cont, masks))
                kl[d].setdefault(name, []).append(k)
                top1[d].setdefault(name, []).append(t)
                dens[d][name] = mean_density(masks, n_ff)
        reuse.append(prefix_reuse_check(src, chunked, prompt, densities[-1], REUSE_PIECE))
        print(f"prompt {i + 1}/{len(prompts)}: {len(prompt)} tokens, rows last layer one/full = "
              f"{one[1][-1]}/{full[1][-1]} ({time.time() - t0:.0f} s)", file=sys.stderr)

    result = {"model": model, "prompts": len(prompts), "tokens": args.tokens, "densities": {}}
    print(f"\nKL(dense || sparse), mean over {len(prompts)} prompts x {args.tokens} teacher-forced tokens")
    print(f"{'density':>7} {'variant':>11} {'avg dens':>8} {'mean KL':>9} {'median KL':>9} {'top-1':>6}")
    for d in densities:
        result["densities"][str(d)] = {}
        for name in kl[d]:
            k = np.concatenate(kl[d][name])
            t = np.concatenate(top1[d][name])
            row = {"avg_density": dens[d][name], "mean_kl": float(k.mean()), "median_kl": float(np.median(k)),
                   "top1": float(t.mean()),
                   "per_prompt_mean_kl": [float(x.mean()) for x in kl[d][name]]}
            result["densities"][str(d)][name] = row
            print(f"{d:>7} {name:>11} {row['avg_density']:>8.4f} {row['mean_kl']:>9.4f} "
                  f"{row['median_kl']:>9.4f} {row['top1']:>6.3f}")
    result["prefix_reuse"] = reuse
    print(f"\nprefix reuse: each prompt prefilled {REUSE_PIECE} tokens at a time, each prefill reusing the "
          f"cached tokens before it (density {densities[-1]}), layers before the last,")
    print("  sum|a - b| / sum(b) of the summed activation statistics, worst layer and prompt:")
    print(f"    reused vs one prefill with n_batch={REUSE_PIECE} (same batches, no reuse): "
          f"{max(r['reused_vs_chunked'] for r in reuse):.1e}")
    print(f"    reused vs one prefill in one batch: {max(r['reused_vs_whole'] for r in reuse):.1e}")
    print(f"  masks identical in {sum(r['layers_identical_masks'] for r in reuse)}/"
          f"{sum(r['layers'] for r in reuse)} layers, lowest overlap "
          f"{min(r['min_overlap_before_last'] for r in reuse):.4f}")
    print(f"  last layer: rows whole/reused {reuse[0]['rows_last']} (first prompt), mask overlap "
          f"{np.mean([r['last_layer_overlap'] for r in reuse]):.3f} (mean)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
