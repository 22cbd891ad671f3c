"""Computing a global prior with the dense model: NPS (the model's own samples) or a corpus.

NPS: `samples` sequences are sampled from BOS, `parallel` at a time in one batch (one KV sequence
each), for `tokens` steps. Sampling: temperature 1.0 and top-p 0.95 (the model's own
distribution with its unreliable tail cut), end-of-generation tokens suppressed so every sample
runs its full length. The activation and impact statistics are accumulated over every generated
token fed back through the model (BOS itself is not counted); the prior's score is their mean.

Corpus: the text is tokenised, cut into chunks of `tokens` tokens, each prefilled densely after a
BOS (not counted), with every row kept to the last layer; at most `samples` chunks.

Both run on a second llama.cpp context of the loaded GlassLlama's model, so the weights are shared
and the caller's KV cache is untouched. The statistics come from the plug-in, as in prefill.
"""
from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Iterable, Optional

import llama_cpp
import numpy as np

from . import _core
from .prior import Prior

NPS_TEMPERATURE = 1.0
NPS_TOP_P = 0.95
NPS_PARALLEL = 8
_TOP_CANDIDATES = 2048  # top-p is computed over the best candidates of the full softmax


# ----------------------------------------------------------------------------------------------
# a statistics context: a second llama_context with its own GLASS context (no masks, stats only)
# ----------------------------------------------------------------------------------------------

class _StatsContext:
    def __init__(self, llm, n_ctx: int, n_batch: int, n_seq: int):
        from .llama import _construct_lock
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.kv_unified = True
        self.glass = _core.Context()
        with _construct_lock:
            self.glass.expect()
            self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
            attached = _core.Context.attached()
        if not self.ctx:
            raise RuntimeError("glass-edge: llama.cpp could not create a calibration context")
        if not attached:
            llama_cpp.llama_free(self.ctx)
            raise RuntimeError("glass-edge: llama.cpp did not create a GLASS backend for the calibration context")
        self.glass.bind(llm._glass_model)
        llama_cpp.llama_set_n_threads(self.ctx, llm.n_threads, llm.n_threads_batch)
        self.n_vocab = llm.n_vocab()
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.acc_act = self.acc_imp = None
        self.acc_rows = None

    def close(self):
        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def clear(self):
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)

    def decode(self, tokens, positions, seqs, want_logits):
        b = self.batch
        b.n_tokens = len(tokens)
        for i, (t, p, s, w) in enumerate(zip(tokens, positions, seqs, want_logits)):
            b.token[i] = int(t)
            b.pos[i] = int(p)
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = int(s)
            b.logits[i] = bool(w)
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise RuntimeError(f"glass-edge: llama_decode failed ({rc}) during calibration")

    def logits(self, i) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    # statistics: the plug-in sums them between stats_begin and stats_end; we add those sums up
    def stats_begin(self, skip_first: bool, first_rows: int):
        self.glass.stats_begin(skip_first, first_rows)

    def stats_end(self):
        self.glass.stats_end()
        act = [np.asarray(a, np.float64) for a in self.glass.act_stats()]
        imp = [np.asarray(a, np.float64) for a in self.glass.imp_stats()]
        rows = np.asarray(self.glass.stats_rows(), np.int64)
        if self.acc_act is None:
            self.acc_act, self.acc_imp, self.acc_rows = act, imp, rows
        else:
            self.acc_act = [a + b for a, b in zip(self.acc_act, act)]
            self.acc_imp = [a + b for a, b in zip(self.acc_imp, imp)]
            self.acc_rows = self.acc_rows + rows

    def prior(self, source: str, settings: dict) -> Prior:
        if self.acc_act is None:
            raise RuntimeError("glass-edge: calibration saw no tokens")
        rows = np.maximum(self.acc_rows, 1)
        return Prior(act_score=[a / r for a, r in zip(self.acc_act, rows)],
                     imp_score=[a / r for a, r in zip(self.acc_imp, rows)],
                     source=source, n_tokens=int(self.acc_rows.max(initial=0)), settings=settings)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="tok", disable=not enabled, leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------
# NPS: the model's own samples
# ----------------------------------------------------------------------------------------------

def sample_top_p(logits: np.ndarray, rng: np.random.Generator, temperature: float, top_p: float,
                 banned: np.ndarray) -> int:
    """One token from softmax(logits / temperature) restricted to the smallest set of most likely
    tokens whose probability reaches top_p (banned tokens have probability 0)."""
    z = logits.astype(np.float64) / temperature
    z[banned] = -np.inf
    zmax = z.max()
    total = np.exp(z - zmax).sum()
    k = min(_TOP_CANDIDATES, z.size)
    cand = np.argpartition(z, -k)[-k:]
    cand = cand[np.argsort(-z[cand], kind="stable")]
    p = np.exp(z[cand] - zmax) / total
    cut = int(np.searchsorted(np.cumsum(p), top_p)) + 1
    p = p[:min(cut, k)]
    return int(cand[rng.choice(p.size, p=p / p.sum())])


def _eog_tokens(llm) -> np.ndarray:
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return np.array([llama_cpp.llama_vocab_is_eog(vocab, t) for t in range(llm.n_vocab())], dtype=bool)


def compute_nps_prior(llm, *, samples: int = 64, tokens: int = 128, seed: int = 0, parallel: int = NPS_PARALLEL,
                      temperature: float = NPS_TEMPERATURE, top_p: float = NPS_TOP_P, progress: bool = True,
                      desc: str = "NPS") -> Prior:
    rng = np.random.default_rng(seed)
    parallel = max(1, min(parallel, samples))
    banned = _eog_tokens(llm)
    bos = llm.token_bos()
    sc = _StatsContext(llm, n_ctx=-(-parallel * (tokens + 1) // 256) * 256, n_batch=max(parallel, 32), n_seq=parallel)
    try:
        with _progress(samples * tokens, desc, progress) as bar:
            done = 0
            while done < samples:
                n = min(parallel, samples - done)
                sc.clear()
                sc.decode([bos] * n, [0] * n, range(n), [True] * n)  # BOS: not counted
                sc.stats_begin(False, 0)
                for pos in range(1, tokens + 1):
                    nxt = [sample_top_p(sc.logits(i), rng, temperature, top_p, banned) for i in range(n)]
                    sc.decode(nxt, [pos] * n, range(n), [True] * n)  # all rows reach the last layer
                    bar.update(n)
                sc.stats_end()
                done += n
    finally:
        sc.close()
    settings = {"samples": samples, "tokens": tokens, "seed": seed, "temperature": temperature,
                "top_p": top_p, "eog": "suppressed", "parallel": parallel}
    return sc.prior("nps", settings)


# ----------------------------------------------------------------------------------------------
# corpus: text files, or a built-in offline corpus (Python's own documentation topics)
# ----------------------------------------------------------------------------------------------

BUILTIN_CORPUS = "builtin"


def builtin_corpus_text() -> str:
    """Python's pydoc topics: English prose with code, shipped with every Python."""
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))


def read_corpus(sources: Iterable[str]) -> tuple:
    """(text, names) of the given files ("builtin" for the offline corpus)."""
    texts, names = [], []
    for s in sources:
        if s == BUILTIN_CORPUS:
            texts.append(builtin_corpus_text())
            names.append("builtin")
        else:
            texts.append(Path(s).read_text(encoding="utf-8", errors="replace"))
            names.append(Path(s).name)
    return "\n\n".join(texts), names


def compute_corpus_prior(llm, text: str, *, names=("corpus",), samples: int = 64, tokens: int = 128,
                         seed: int = 0, progress: bool = True, desc: str = "corpus") -> Prior:
    ids = llm.tokenize(text.encode("utf-8"), add_bos=False)
    chunks = [ids[i:i + tokens] for i in range(0, len(ids) - tokens + 1, tokens)]
    if not chunks and ids:
        chunks = [ids]
    if not chunks:
        raise ValueError("the corpus is empty")
    if len(chunks) > samples:  # an even spread over the whole corpus, reproducible by seed
        pick = np.sort(np.random.default_rng(seed).choice(len(chunks), size=samples, replace=False))
        chunks = [chunks[i] for i in pick]
    bos = llm.token_bos()
    sc = _StatsContext(llm, n_ctx=-(-(tokens + 1) // 256) * 256, n_batch=tokens + 1, n_seq=1)
    try:
        with _progress(sum(map(len, chunks)), desc, progress) as bar:
            for chunk in chunks:
                seq = [bos] + list(chunk)
                sc.clear()
                sc.stats_begin(True, len(seq))
                sc.decode(seq, range(len(seq)), [0] * len(seq), [True] * len(seq))
                sc.stats_end()
                bar.update(len(chunk))
    finally:
        sc.close()
    settings = {"samples": len(chunks), "tokens": tokens, "seed": seed, "files": list(names)}
    return sc.prior("corpus:" + ",".join(names), settings)


# ----------------------------------------------------------------------------------------------
# `glass-edge calibrate`
# ----------------------------------------------------------------------------------------------

def calibrate(args) -> int:
    from .errors import UserError
    from .gguf_meta import write_with_prior
    from .prior import PriorError
    from .run import load, resolve_model
    model = resolve_model(args.model)
    out = Path(args.output)
    if out.exists() and out.resolve() == Path(model).resolve():
        raise UserError("-o must name a new file: glass-edge never modifies its input model")
    sources = args.source or ["nps"]
    if "nps" in sources and len(sources) > 1:
        raise UserError("--source takes either nps or corpus files (or 'builtin'), not both")
    for s in sources:
        if s not in ("nps", BUILTIN_CORPUS) and not Path(s).is_file():
            raise UserError(f"corpus file not found: {s}")
    llm = load(model, density=1.0, method="dense", threads=args.threads, ctx_size=256, seed=args.seed,
               verbose=args.verbose)
    if not any(llm.ffn_widths):
        raise UserError(f"{model} has no dense FFN layers that glass-edge can sparsify")
    if sources == ["nps"]:
        prior = compute_nps_prior(llm, samples=args.samples, tokens=args.tokens, seed=args.seed, desc="NPS samples")
    else:
        text, names = read_corpus(sources)
        try:
            prior = compute_corpus_prior(llm, text, names=names, samples=args.samples, tokens=args.tokens,
                                         seed=args.seed, desc="corpus")
        except ValueError as e:
            raise UserError(str(e)) from None
    from tqdm import tqdm
    size = Path(model).stat().st_size
    try:
        with tqdm(total=size, desc=f"writing {out.name}", unit="B", unit_scale=True, leave=False) as bar:
            write_with_prior(model, out, prior, progress=bar.update)
    except (PriorError, OSError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {out}: global prior from {prior.describe()}")
    return 0
