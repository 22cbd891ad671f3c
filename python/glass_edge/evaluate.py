"""`glass-edge eval`: how far each sparse method's output is from the dense model's.

Per prompt:
  1. reference: the dense model's greedy continuation of exactly --max-tokens tokens (T; end of
     sequence is not special) after a dense prefill, teacher-forced through the dense model (one
     batched eval) to record the dense logits along it (see Evaluator.reference).
  2. for every method x density: a fresh dense prefill of the prompt (which selects and installs
     that method's masks), then the same teacher-forced eval through the sparse model. Per token:
     KL(dense || sparse) in nats, whether the sparse top-1 equals the dense top-1, and the sparse
     log-probability of the reference token (for perplexity).
     Scored positions are the T-1 predictions of reference tokens 2..T: the first reference token
     comes from the prefill's last logits, which are dense (and identical) under every method.
  3. a free-running sparse greedy generation of T tokens, and its ROUGE-L F1 against the
     reference (on token ids). It follows the reference as long as the teacher-forced argmax does,
     then continues with batched draft checking (decoding.greedy_continue).
`dense` is evaluated like any method, once, as density 1.0 (it must give KL 0, top-1 1, ROUGE-L 1).
`random` masks use seed = prompt index (plus -s when given), so runs are reproducible.
Numbers are averaged over prompts; kl_mean and kl_p90 are over all scored tokens of all prompts.
Prompts are independent: --jobs worker processes take whole prompts each.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .decoding import context_size, forward, greedy_continue, last_logits
from .errors import UserError
from .logit_metrics import DenseReference, compare
from .prompts import load_prompts
from .rouge import rouge_l
from .selection import NEEDS_PRIOR, select

LAMBDA_METHODS = {"a-glass", "i-glass"}   # the methods whose selection uses --lambda


@dataclass(frozen=True)
class Config:
    method: str
    density: float


def configs_for(methods, densities) -> list:
    """Dense once (density 1.0), every other method at every density, in the order given."""
    out = []
    for m in dict.fromkeys(methods):
        if m == "dense":
            out.append(Config("dense", 1.0))
        else:
            out.extend(Config(m, d) for d in dict.fromkeys(densities))
    return out


@dataclass
class PromptScore:
    """One method x density on one prompt."""
    kl: np.ndarray        # per scored token
    top1: float           # fraction of scored tokens whose sparse top-1 is the dense top-1
    ppl: float            # perplexity of the reference under the sparse model
    rouge: float          # ROUGE-L F1 of the free run against the reference
    free_run: list        # the free run's tokens
    free_run_evals: int   # evals the free run took after leaving the reference
    seconds: float        # all of it: prefill, teacher-forced eval, metrics, free run
    free_run_seconds: float


@dataclass
class ConfigScores:
    """One method x density over the prompts, in prompt order."""
    scores: list = field(default_factory=list)

    def add(self, s: PromptScore) -> None:
        self.scores.append(s)

    @property
    def kl(self) -> list:
        return [s.kl for s in self.scores]

    @property
    def top1(self) -> list:
        return [s.top1 for s in self.scores]

    @property
    def ppl(self) -> list:
        return [s.ppl for s in self.scores]

    @property
    def rouge(self) -> list:
        return [s.rouge for s in self.scores]


@dataclass
class PromptReference:
    tokens: list                  # the prompt's tokens (with BOS)
    reference: list               # the dense greedy continuation, T tokens
    dense: DenseReference         # dense logits along it (rows predict reference[1:])
    ppl_dense: float
    seconds: float


@dataclass
class PromptOutcome:
    """Everything measured on one prompt (small enough to send back from a worker process)."""
    index: int
    reference: list
    ppl_dense: float
    seconds: float
    scores: dict                  # Config -> PromptScore


class Evaluator:
    """Runs the measurements on one GlassLlama; holds one prompt's dense logits at a time."""

    def __init__(self, llm, max_tokens: int, max_draft: int = 16):
        self.llm = llm
        self.max_tokens = max_tokens
        self.max_draft = max_draft
        self._sparse_logits = np.empty((max_tokens - 1, llm.n_vocab()), dtype=np.float32)

    def run_prompt(self, index: int, tokens, configs, seed: int, tick=lambda label: None) -> PromptOutcome:
        """The reference and every configuration on one prompt; tick(what was done) after each."""
        pr = self.reference(tokens)
        tick(f"prompt {index + 1}: dense reference")
        scores = {}
        for c in configs:
            scores[c] = self.score(pr, c, seed)
            tick(f"prompt {index + 1}: {c.method} {c.density:g}")
        return PromptOutcome(index, pr.reference, pr.ppl_dense, pr.seconds, scores)

    def _prefill(self, tokens, method: str, density: float, seed: int = 0) -> None:
        """A clean dense prefill of the prompt (KV cache emptied first), installing the masks."""
        llm = self.llm
        llm.method, llm.density = method, density
        llm.reset()
        llm.prefill(tokens)
        if method == "random":  # a seed of its own per prompt, not select()'s fixed default
            llm.install_masks(select("random", density, n_ff=llm.ffn_widths, seed=seed))

    def reference(self, tokens) -> PromptReference:
        """The dense greedy continuation, made consistent with the teacher-forced dense pass.

        llama.cpp's logits for a row differ slightly (~1e-3 relative on gemma-3-270m) between a
        one-token eval and a large batch, enough to flip a near-tie. Every comparison here uses the
        teacher-forced batch, so the reference is regenerated from the first position where that
        batch's argmax disagrees with it, until none does (each round fixes a longer prefix: a row
        depends only on the tokens up to it). Then the dense free run is the reference itself."""
        t0 = time.perf_counter()
        llm, n_prompt = self.llm, len(tokens)
        self._prefill(tokens, "dense", 1.0)
        first = int(np.argmax(last_logits(llm)))
        ref, _ = greedy_continue(llm, [first], self.max_tokens, context=tokens, max_draft=self.max_draft)
        for _round in range(self.max_tokens):
            llm.n_tokens = n_prompt
            logits = forward(llm, ref[:-1])
            predicted = logits.argmax(axis=1)
            off = np.flatnonzero(predicted != np.asarray(ref[1:]))
            if off.size == 0:
                break
            i = int(off[0])
            fixed = ref[:i + 1] + [int(predicted[i])]
            llm.n_tokens = n_prompt + len(fixed) - 1
            ref, _ = greedy_continue(llm, fixed, self.max_tokens, context=tokens, sources=[ref],
                                     max_draft=self.max_draft)
        else:  # unreachable while rows are independent; keep the logits matching the reference
            llm.n_tokens = n_prompt
            logits = forward(llm, ref[:-1])
        dense = DenseReference(logits, ref[1:])
        ppl_dense = float(np.exp(-dense.target_logprob.mean()))
        return PromptReference(list(tokens), ref, dense, ppl_dense, time.perf_counter() - t0)

    def score(self, pr: PromptReference, config: Config, seed: int) -> PromptScore:
        t0 = time.perf_counter()
        llm, ref, n_prompt = self.llm, pr.reference, len(pr.tokens)
        self._prefill(pr.tokens, config.method, config.density, seed)
        logits = forward(llm, ref[:-1], out=self._sparse_logits)
        cmp = compare(pr.dense, logits)
        # free run: identical to the reference up to the first position where the sparse argmax
        # (under teacher forcing) leaves it; from there it generates on its own
        off = np.flatnonzero(cmp.argmax != np.asarray(ref[1:]))
        free, n_evals = list(ref), 0
        t_free = time.perf_counter()
        if off.size:
            i = int(off[0])
            free = list(ref[:i + 1]) + [int(cmp.argmax[i])]
            llm.n_tokens = n_prompt + len(free) - 1
            free, n_evals = greedy_continue(llm, free, self.max_tokens, context=pr.tokens, sources=[ref],
                                            max_draft=self.max_draft)
        t_end = time.perf_counter()
        return PromptScore(kl=cmp.kl, top1=float(cmp.top1.mean()),
                           ppl=float(np.exp(-cmp.target_logprob.mean())), rouge=rouge_l(free, ref),
                           free_run=free, free_run_evals=n_evals, seconds=t_end - t0,
                           free_run_seconds=t_end - t_free)


# ----------------------------------------------------------------------------------------------
# results: JSON, Markdown table, plot
# ----------------------------------------------------------------------------------------------

def result_row(config: Config, lam: Optional[float], scores: ConfigScores, ppl_dense: list) -> dict:
    kl_all = np.concatenate(scores.kl) if scores.kl else np.zeros(0)
    return {
        "method": config.method,
        "density": config.density,
        "lambda": lam if config.method in LAMBDA_METHODS else None,
        "kl_mean": float(kl_all.mean()) if kl_all.size else None,
        "kl_p90": float(np.percentile(kl_all, 90)) if kl_all.size else None,
        "top1": float(np.mean(scores.top1)),
        "ppl": float(np.mean(scores.ppl)),
        "ppl_dense": float(np.mean(ppl_dense)),
        # exp(mean NLL over all scored tokens): every prompt scores as many tokens, so this is the
        # geometric mean of the per-prompt perplexities, which one runaway prompt cannot swamp
        "ppl_pooled": float(np.exp(np.mean(np.log(scores.ppl)))),
        "rougeL": float(np.mean(scores.rouge)),
        "seconds": round(sum(x.seconds for x in scores.scores), 2),
        "free_run_seconds": round(sum(x.free_run_seconds for x in scores.scores), 2),
        "free_run_evals": sum(x.free_run_evals for x in scores.scores),
        "per_prompt": [
            {"kl_mean": float(k.mean()), "top1": t, "ppl": p, "rougeL": r}
            for k, t, p, r in zip(scores.kl, scores.top1, scores.ppl, scores.rouge)
        ],
    }


def markdown_table(rows: list) -> str:
    lines = ["| method | density | λ | KL mean | KL p90 | top-1 | ppl | ppl dense | ROUGE-L |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def num(x):  # a runaway perplexity (random masks) in short scientific notation
        return f"{x:.3f}" if abs(x) < 1e4 else f"{x:.3g}"
    for r in rows:
        lam = "" if r["lambda"] is None else f"{r['lambda']:g}"
        lines.append(f"| {r['method']} | {r['density']:g} | {lam} | {r['kl_mean']:.4f} | {r['kl_p90']:.4f} | "
                     f"{r['top1']:.3f} | {num(r['ppl'])} | {num(r['ppl_dense'])} | {r['rougeL']:.3f} |")
    return "\n".join(lines)


def _write_atomically(path: Path, write) -> None:
    """write(tmp_path) into a temporary file beside path, then rename it over path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: Path, report: dict) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    _write_atomically(path, write)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'glass-edge[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def write_plot(path: Path, rows: list, title: str) -> None:
    """KL(dense || sparse) against density, one line per method (dense, KL 0, is not drawn)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"):
        mine = [r for r in rows if r["method"] == method]
        pts = sorted((r["density"], r["kl_mean"]) for r in mine)
        lam = mine[0]["lambda"]
        label = method if lam is None else f"{method} (λ={lam:g})"
        ax.plot([d for d, _ in pts], [max(k, 1e-6) for _, k in pts], marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("density (fraction of FFN neurons kept)")
    ax.set_ylabel("mean KL(dense ‖ sparse), nats/token")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.lines:
        ax.legend()
    fig.tight_layout()
    _write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------

def _check_output_dir(path: Optional[str]) -> Optional[Path]:
    if path is None:
        return None
    p = Path(path)
    if not p.parent.resolve().is_dir():
        raise UserError(f"directory of {path} does not exist")
    return p


@dataclass
class RunSettings:
    """What a process needs to evaluate prompts (picklable: sent to worker processes)."""
    model: str
    threads: int
    ctx_size: int
    seed: int
    lam: Optional[float]
    prior: object          # a resolved Prior, a calibrated GGUF path, or None
    max_tokens: int
    draft: int
    configs: list


def _load(settings: RunSettings, verbose: bool = False):
    from .run import load
    return load(settings.model, density=1.0, method="dense", threads=settings.threads,
                ctx_size=settings.ctx_size, seed=settings.seed, verbose=verbose, lam=settings.lam,
                prior=settings.prior)


_worker_state = None  # in a worker process: (Evaluator, RunSettings, progress queue)


def _worker_init(settings: RunSettings, ticks) -> None:
    global _worker_state
    llm = _load(settings)
    _worker_state = (Evaluator(llm, settings.max_tokens, settings.draft), settings, ticks)


def _worker_run(task) -> PromptOutcome:
    ev, settings, ticks = _worker_state
    index, tokens, seed = task
    return ev.run_prompt(index, tokens, settings.configs, seed, tick=lambda label: ticks.put(label))


def _run_all(llm, settings: RunSettings, tasks: list, jobs: int, bar) -> list:
    """PromptOutcomes of every task, in task order: on `llm` here, or spread over `jobs` worker
    processes with a model each (prompts are independent; one-thread processes avoid llama.cpp's
    per-op thread synchronisation in decode, and run the numpy metrics in parallel)."""
    def tick(label):
        bar.set_postfix_str(label, refresh=False)
        bar.update(1)
    if jobs == 1:
        ev = Evaluator(llm, settings.max_tokens, settings.draft)
        return [ev.run_prompt(i, toks, settings.configs, seed, tick) for i, toks, seed in tasks]
    import multiprocessing
    import queue
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool
    mp = multiprocessing.get_context("spawn")  # llama.cpp's threads do not survive a fork
    ticks = mp.Queue()
    # an executor, not a Pool: a worker that dies (e.g. a crash in native code) fails the run
    # with BrokenProcessPool instead of leaving it waiting forever
    with ProcessPoolExecutor(jobs, mp_context=mp, initializer=_worker_init, initargs=(settings, ticks)) as ex:
        futures = [ex.submit(_worker_run, task) for task in tasks]
        while True:
            done, pending = wait(futures, timeout=0, return_when=FIRST_EXCEPTION)
            failed = next((f for f in done if f.exception() is not None), None)
            if failed is not None:
                ex.shutdown(wait=False, cancel_futures=True)  # start no more prompts
                if isinstance(failed.exception(), BrokenProcessPool):
                    raise UserError("an eval worker process died (killed, or crashed in native code); "
                                    "nothing was written") from None
                raise failed.exception()
            if not pending:
                break
            try:
                tick(ticks.get(timeout=0.25))
            except queue.Empty:
                pass
        outcomes = [f.result() for f in futures]
    while not ticks.empty():
        tick(ticks.get())
    return sorted(outcomes, key=lambda o: o.index)


def evaluate(args) -> int:
    from .run import resolve_model

    if args.max_tokens < 2:
        raise UserError("--max-tokens must be at least 2 (the first token is not scored)")
    prompts = load_prompts(args.prompts)
    json_path = _check_output_dir(args.json_out)
    plot_path = _check_output_dir(args.plot)
    if plot_path is not None:
        _pyplot()  # fail now, not after the run
    configs = configs_for(args.methods, args.densities)
    cores = os.cpu_count() or 1
    jobs = min(args.jobs or cores, len(prompts))
    threads = args.threads or max(1, cores // jobs)
    settings = RunSettings(model=resolve_model(args.model), threads=threads, ctx_size=args.ctx_size,
                           seed=args.seed, lam=args.lam, prior=args.prior, max_tokens=args.max_tokens,
                           draft=args.draft, configs=configs)
    llm = _load(settings, verbose=args.verbose)
    if any(c.method in NEEDS_PRIOR for c in configs):
        settings.prior = llm.global_prior()  # resolve (or compute) it once, before the timed run
    lam = llm.lam

    tokenized = [llm.tokenize(p.encode("utf-8"), add_bos=True, special=True) for p in prompts]
    n_ctx = context_size(llm)
    for i, toks in enumerate(tokenized):
        if len(toks) + args.max_tokens > n_ctx:
            raise UserError(f"prompt {i + 1} ({len(toks)} tokens) + --max-tokens {args.max_tokens} exceed "
                            f"the context size {n_ctx}; raise -c")
    # random masks: a fixed seed per prompt, so every run draws the same masks
    tasks = [(i, toks, i if args.seed < 0 else args.seed + i) for i, toks in enumerate(tokenized)]

    t_start = time.perf_counter()
    from tqdm import tqdm
    with tqdm(total=len(prompts) * (1 + len(configs)), unit="pass", file=sys.stderr,
              dynamic_ncols=True, disable=args.quiet) as bar:
        outcomes = _run_all(llm, settings, tasks, jobs, bar)
    total_s = time.perf_counter() - t_start

    prompt_info = [{"prompt": prompts[o.index], "n_prompt_tokens": len(tokenized[o.index]),
                    "ppl_dense": o.ppl_dense, "seconds": round(o.seconds, 2),
                    "reference": llm.detokenize(o.reference).decode("utf-8", "replace")} for o in outcomes]
    scores = {c: ConfigScores() for c in configs}
    for o in outcomes:
        for c in configs:
            scores[c].add(o.scores[c])
    ppl_dense = [o.ppl_dense for o in outcomes]
    rows = [result_row(c, lam, scores[c], ppl_dense) for c in configs]
    report = {
        "model": os.path.basename(settings.model),
        "max_tokens": args.max_tokens,
        "n_prompts": len(prompts),
        "results": rows,
        "scored_tokens_per_prompt": args.max_tokens - 1,
        "prompts_file": str(args.prompts),
        "jobs": jobs,
        "threads_per_job": threads,
        "draft": args.draft,
        "timing": {"total_s": round(total_s, 1),  # wall clock; the parts below add up every job's time
                   "reference_s": round(sum(o.seconds for o in outcomes), 1),
                   "free_run_s": round(sum(r["free_run_seconds"] for r in rows), 1),
                   "free_run_evals": sum(r["free_run_evals"] for r in rows)},
        "prompts": prompt_info,
    }
    print(markdown_table(rows))
    print(f"\n{len(prompts)} prompts x {args.max_tokens} tokens, {len(configs)} configurations, "
          f"{jobs} job(s) x {threads} thread(s): {total_s / 60:.1f} min", file=sys.stderr)
    if json_path is not None:
        write_json(json_path, report)
    if plot_path is not None:
        write_plot(plot_path, rows, f"{report['model']}: {len(prompts)} prompts x {args.max_tokens} tokens")
    return 0
