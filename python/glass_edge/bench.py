"""`glass-edge bench`: decode and prefill speed, stock llama.cpp vs glass-edge, per density.

Both engines live in this one process and take turns, repetition by repetition (the order
reverses every other repetition, so slow drift of the machine cancels):
  - stock: a plain `llama_cpp.Llama`, loaded while the GLASS device claims nothing, so its
    weights sit where llama.cpp alone puts them (CPU weight repacking on) and its graphs never
    reach the plug-in -- exactly what users get without glass-edge;
  - glass-edge: one `GlassLlama` whose density is changed between runs.
A run is: reset the KV cache, prefill a fixed prompt of exactly -p tokens (random ordinary
tokens, fixed seed, BOS first when the model adds one), then decode exactly -n fixed tokens one
at a time (teacher-forced: no sampling, no EOS can stop it). Decode tokens/s = n / decode time.
For glass-edge the prefill also collects the statistics, and the masks are then chosen and
installed (mask_ms); time to first token = that whole call. Prefill speed is also measured
at --pp-sizes prompt lengths. Peak RSS comes from two child processes (see rss.py).

The bytes-ideal speedup comes from the model's own tensor sizes (decode_bytes.py); efficiency
= measured speedup / ideal. Memory figures are MiB.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from .decode_bytes import decode_bytes
from .errors import UserError

__all__ = ["bench", "run_bench", "markdown_report"]

_BUFFER_LINE = re.compile(r"(\S+) model buffer size =\s*([\d.]+) MiB")
_N_WARMUP_DECODE = 8
_N_RSS_DECODE = 16


# ----------------------------------------------------------------------------------------------
# loading the two engines
# ----------------------------------------------------------------------------------------------

def _load_logged(make, verbose: bool):
    """make() with llama.cpp's log captured: returns (object, {buffer name: MiB})."""
    from .llama_log import llama_log_to

    buffers = {}

    def on_text(level, text):
        m = _BUFFER_LINE.search(text)
        if m:
            buffers[m.group(1)] = buffers.get(m.group(1), 0.0) + float(m.group(2))

    with llama_log_to(on_text, echo=verbose):
        obj = make()
    return obj, buffers


def load_stock(model: str, verbose: bool = False, **kwargs):
    """A plain llama_cpp.Llama with no weight on the GLASS device, even though glass-edge is
    registered in this process. Returns (llm, {buffer: MiB})."""
    import llama_cpp

    from . import _core
    from .llama import _construct_lock

    if not hasattr(_core, "set_plugin_enabled"):
        raise RuntimeError("glass_edge._core predates set_plugin_enabled: rebuild the C++ module")
    with _construct_lock:  # the plug-in's load slots are process-wide
        _core.weights_begin()
        _core.set_plugin_enabled(False)
        try:
            llm, buffers = _load_logged(lambda: llama_cpp.Llama(model, verbose=verbose, **kwargs), verbose)
        finally:
            _core.set_plugin_enabled(True)
        claimed = _core.Model.from_loaded().n_layer
    if claimed or any(name.startswith("GLASS") for name in buffers):
        raise RuntimeError("the stock model put weights on the GLASS device")
    return llm, buffers


def load_glass(model: str, verbose: bool = False, **kwargs):
    from .llama import GlassLlama

    return _load_logged(lambda: GlassLlama(model, verbose=verbose, **kwargs), verbose)


# ----------------------------------------------------------------------------------------------
# one run of each engine
# ----------------------------------------------------------------------------------------------

def ordinary_tokens(llm) -> np.ndarray:
    """Token ids that are plain text pieces (no control, unknown, unused or byte tokens)."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    ids = [t for t in range(llm.n_vocab())
           if llama_cpp.llama_vocab_get_attr(vocab, t) & llama_cpp.LLAMA_TOKEN_ATTR_NORMAL]
    if not ids:  # a vocab without attributes: anything that is not end-of-generation or control
        ids = [t for t in range(llm.n_vocab())
               if not (llama_cpp.llama_vocab_is_eog(vocab, t) or llama_cpp.llama_vocab_is_control(vocab, t))]
    return np.asarray(ids, dtype=np.int64)


@dataclass
class _Run:
    ttft_s: float         # prefill call, for glass-edge with statistics, selection and installation
    prefill_s: float      # prefill only (glass-edge: without selection and installation)
    mask_ms: float = 0.0
    decode_s: float = 0.0
    sparse_ops: int = 0   # sparse FFN matmuls during the decode (glass-edge)
    ffn_s: float = 0.0    # of decode_s, the time in the FFN layers (glass-edge)


def _decode(llm, gen) -> float:
    t0 = time.perf_counter()
    for tok in gen:
        llm.eval([tok])
    return time.perf_counter() - t0


def run_stock(llm, prompt, gen) -> _Run:
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    pp = time.perf_counter() - t0
    return _Run(ttft_s=pp, prefill_s=pp, decode_s=_decode(llm, gen))


def run_glass(llm, density: float, prompt, gen, check_sparse: bool) -> _Run:
    from .selection import check_density

    llm.density = check_density(density)
    llm.reset()
    t0 = time.perf_counter()
    llm.prefill(prompt)
    ttft = time.perf_counter() - t0
    mask_ms = llm.last_mask_ms
    kept = llm.mask_densities()
    if llm.method != "dense" and kept and abs(float(np.mean(kept)) - density) > 0.02:
        raise RuntimeError(f"glass-edge installed masks keeping {np.mean(kept):.3f} of the FFN, not {density:g}")
    ops0, ffn0 = llm.sparse_ops, llm.ffn_seconds
    dt = _decode(llm, gen) if gen else 0.0
    ops, ffn_s = llm.sparse_ops - ops0, llm.ffn_seconds - ffn0
    if check_sparse and gen:
        # every decoded token must have gone through the sparse kernels in every masked layer
        n_ff = llm._n_ff
        masked = sum(1 for m, nf in zip(llm.last_masks, n_ff) if m is not None and len(m) < nf)
        if masked == 0 or ops < 2 * masked * len(gen):
            raise RuntimeError(f"glass-edge decode at density {density:g} did not run sparse "
                               f"({ops} sparse ops for {len(gen)} tokens, {masked} masked layers)")
    return _Run(ttft_s=ttft, prefill_s=ttft - mask_ms / 1e3, mask_ms=mask_ms, decode_s=dt, sparse_ops=ops, ffn_s=ffn_s)


# ----------------------------------------------------------------------------------------------
# the benchmark
# ----------------------------------------------------------------------------------------------

@dataclass
class BenchConfig:
    model: str
    densities: list
    method: str = "griffin"
    lam: object = None
    prior: object = None
    n_prompt: int = 32
    n_gen: int = 128
    pp_sizes: list = field(default_factory=lambda: [128, 512])
    threads: int = 0
    repetitions: int = 5
    rss: bool = True
    seed: int = 0
    verbose: bool = False
    progress: object = None  # progress(step: str) after each run
    sizes: object = None     # DecodeBytes of the model, if already read


def _time_ideal(res: dict, rows: list) -> None:
    """With a density-1.0 row (stock's own FFN kernels, timed): the ideal measured in time instead
    of bytes, i.e. stock's time with its FFN time scaled by the density, and the sparse FFN's speed
    per kept byte relative to stock's dense FFN (ffn_efficiency). Bytes-ideal and efficiency stay
    the targets; these say whether a shortfall is in the sparse kernels or in the machine's
    balance (the non-FFN part may read its bytes slower or faster than the FFN does)."""
    full = next((r for r in rows if r["density"] == 1.0), None)
    res["ffn_ms_dense"] = full["ffn_ms"] if full else None
    for r in rows:
        r["ffn_efficiency"] = r["ideal_time"] = r["efficiency_time"] = None
        if full is None or r["ffn_ms"] <= 0:
            continue
        dense_ms = 1e3 / res["dense_tg"]
        ffn_dense = min(full["ffn_ms"], dense_ms)
        r["ffn_efficiency"] = r["density"] * ffn_dense / r["ffn_ms"]
        r["ideal_time"] = dense_ms / (dense_ms - (1.0 - r["density"]) * ffn_dense)
        r["efficiency_time"] = r["speedup"] / r["ideal_time"]


def _mean_std(xs) -> tuple:
    xs = np.asarray(xs, dtype=np.float64)
    return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0


def _n_steps(cfg: BenchConfig) -> int:
    return (2 + len(cfg.densities)  # warm-up
            + cfg.repetitions * (1 + len(cfg.densities))
            + cfg.repetitions * 2 * len(cfg.pp_sizes)
            + (2 if cfg.rss else 0))


def run_bench(cfg: BenchConfig) -> dict:
    """Measure everything; returns the results dict (the JSON of `glass-edge bench`)."""
    step = cfg.progress or (lambda _name: None)
    load_start = os.getloadavg()[0]
    sizes = cfg.sizes or decode_bytes(cfg.model)
    threads = cfg.threads or os.cpu_count() or 1
    n_ctx = max([cfg.n_prompt + cfg.n_gen] + list(cfg.pp_sizes))
    n_ctx = (n_ctx + 255) // 256 * 256
    common = dict(n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=threads, n_threads_batch=threads)

    dense, dense_buffers = load_stock(cfg.model, cfg.verbose, **common)
    glass, glass_buffers = load_glass(cfg.model, cfg.verbose, density=cfg.densities[0], method=cfg.method,
                                      lam=cfg.lam, prior=cfg.prior, **common)
    if not any(glass._n_ff):
        raise UserError(f"glass-edge took none of {cfg.model}'s FFN weights (types it cannot sparsify?)")

    # fixed random prompt / decode tokens: ordinary pieces only, BOS first if the model adds one
    rng = np.random.default_rng(cfg.seed)
    pool = ordinary_tokens(dense)
    stream = [int(t) for t in rng.choice(pool, size=max([cfg.n_prompt] + list(cfg.pp_sizes)) + cfg.n_gen)]
    bos = [dense.token_bos()] if dense._model.add_bos_token() and dense.token_bos() >= 0 else []

    def prompt_of(n):
        return (bos + stream[: n - len(bos)]) if n > len(bos) else stream[:n]

    prompt = prompt_of(cfg.n_prompt)
    gen = stream[len(stream) - cfg.n_gen:]
    sparse_check = cfg.method != "dense"

    # warm-up: page in the weights, first mask installation, compute buffers
    run_stock(dense, prompt, gen[:_N_WARMUP_DECODE])
    step("warm-up stock")
    for d in cfg.densities:
        run_glass(glass, d, prompt, gen[:_N_WARMUP_DECODE], False)
        step(f"warm-up glass d={d:g}")
    big = prompt_of(max([cfg.n_prompt] + list(cfg.pp_sizes)))
    run_stock(dense, big, [])
    run_glass(glass, cfg.densities[0], big, [], False)
    step("warm-up prefill")

    # decode and prefill at -p: engines alternate, order reversed every other repetition
    engines = [None] + list(cfg.densities)   # None = stock
    dense_runs, glass_runs = [], {d: [] for d in cfg.densities}
    for r in range(cfg.repetitions):
        for d in (engines if r % 2 == 0 else engines[::-1]):
            if d is None:
                dense_runs.append(run_stock(dense, prompt, gen))
                step(f"rep {r + 1}/{cfg.repetitions} stock")
            else:
                glass_runs[d].append(run_glass(glass, d, prompt, gen, sparse_check and d < 1.0))
                step(f"rep {r + 1}/{cfg.repetitions} glass d={d:g}")

    # prefill at the extra sizes (statistics are collected, masks chosen but not timed as prefill)
    pp_density = next((d for d in cfg.densities if d < 1.0), cfg.densities[0])
    pp_dense = {n: [] for n in cfg.pp_sizes}
    pp_glass = {n: [] for n in cfg.pp_sizes}
    for r in range(cfg.repetitions):
        for n in cfg.pp_sizes:
            toks = prompt_of(n)
            pair = [("stock", lambda: run_stock(dense, toks, [])),
                    ("glass", lambda: run_glass(glass, pp_density, toks, [], False))]
            for name, fn in (pair if r % 2 == 0 else pair[::-1]):
                (pp_dense if name == "stock" else pp_glass)[n].append(n / fn().prefill_s)
                step(f"rep {r + 1}/{cfg.repetitions} pp{n} {name}")

    res = {
        "model": str(cfg.model),
        "model_desc": dense._model.desc(),
        "model_size_mib": dense._model.size() / 2**20,
        "n_params": int(dense._model.n_params()),
        "threads": threads,
        "method": cfg.method,
        "lambda": glass.lam,
        "n_prompt": cfg.n_prompt,
        "n_gen": cfg.n_gen,
        "repetitions": cfg.repetitions,
        "n_ctx": n_ctx,
        "bytes_per_token": {"ffn": sizes.ffn, "non_ffn": sizes.non_ffn, "total": sizes.total,
                            "ffn_fraction": sizes.ffn_fraction, "tied_head": sizes.tied_head},
        "buffers_mib": {"stock": dense_buffers, "glass": glass_buffers},
    }
    dense_tg = [cfg.n_gen / x.decode_s for x in dense_runs]
    res["dense_tg"], res["dense_tg_std"] = _mean_std(dense_tg)
    res["dense_tg_samples"] = dense_tg
    res["dense_pp"], res["dense_pp_std"] = _mean_std([cfg.n_prompt / x.prefill_s for x in dense_runs])
    all_glass = [x for d in cfg.densities for x in glass_runs[d]]
    res["glass_pp"], res["glass_pp_std"] = _mean_std([cfg.n_prompt / x.prefill_s for x in all_glass])
    res["dense_ttft_ms"] = _mean_std([x.ttft_s * 1e3 for x in dense_runs])[0]

    rows = []
    for d in cfg.densities:
        runs = glass_runs[d]
        tg = [cfg.n_gen / x.decode_s for x in runs]
        tg_mean, tg_std = _mean_std(tg)
        ideal = sizes.ideal_speedup(d)
        speedup = tg_mean / res["dense_tg"]
        ttft_ms = _mean_std([x.ttft_s * 1e3 for x in runs])[0]
        rows.append({
            "density": d,
            "tg": tg_mean,
            "tg_std": tg_std,
            "speedup": speedup,
            "speedup_std": _mean_std([g / s for g, s in zip(tg, dense_tg)])[1],  # paired, per repetition
            "ideal": ideal,
            "efficiency": speedup / ideal,
            "mask_ms": _mean_std([x.mask_ms for x in runs])[0],
            "mask_ms_std": _mean_std([x.mask_ms for x in runs])[1],
            "glass_pp": _mean_std([cfg.n_prompt / x.prefill_s for x in runs])[0],
            "glass_pp_std": _mean_std([cfg.n_prompt / x.prefill_s for x in runs])[1],
            "ttft_ms": ttft_ms,
            "ttft_overhead": (ttft_ms - res["dense_ttft_ms"]) / res["dense_ttft_ms"],
            "sparse_ops_per_token": runs[-1].sparse_ops / cfg.n_gen,
            # where a decode token's time goes: the FFN layers (timed by the plug-in) and the rest
            "ffn_ms": _mean_std([x.ffn_s * 1e3 / cfg.n_gen for x in runs])[0],
            "other_ms": _mean_std([(x.decode_s - x.ffn_s) * 1e3 / cfg.n_gen for x in runs])[0],
            "tg_samples": tg,  # per repetition, in order (paired with dense_tg_samples)
        })
    res["rows"] = rows
    _time_ideal(res, rows)
    worst = max((r for r in rows if r["density"] < 1.0), key=lambda r: r["ttft_ms"], default=rows[0])
    res["glass_ttft_ms"] = worst["ttft_ms"]
    res["ttft_overhead"] = worst["ttft_overhead"]

    res["pp_density"] = pp_density
    for n in cfg.pp_sizes:
        res[f"dense_pp_{n}"], res[f"dense_pp_{n}_std"] = _mean_std(pp_dense[n])
        res[f"glass_pp_{n}"], res[f"glass_pp_{n}_std"] = _mean_std(pp_glass[n])

    # other processes on the CPU make every figure noisy: record how busy the machine was
    res["cpu_count"] = os.cpu_count()
    res["loadavg_start"], res["loadavg_end"] = load_start, os.getloadavg()[0]

    res["rss_dense_mb"] = res["rss_glass_mb"] = res["rss_ratio"] = None
    if cfg.rss:
        from .rss import peak_rss_mib

        del dense, glass  # the children load their own copies
        kw = dict(prompt=prompt, gen=gen[:_N_RSS_DECODE], n_ctx=n_ctx, threads=threads)
        rss_density = max((d for d in cfg.densities if d < 1.0), default=cfg.densities[0])
        res["rss_dense_mb"] = peak_rss_mib(cfg.model, glass=False, **kw)
        step("peak RSS stock")
        res["rss_glass_mb"] = peak_rss_mib(cfg.model, glass=True, density=rss_density, method=cfg.method,
                                           lam=cfg.lam, prior=cfg.prior, **kw)
        step("peak RSS glass")
        res["rss_density"] = rss_density
        res["rss_ratio"] = res["rss_glass_mb"] / res["rss_dense_mb"]
    return res


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------

def _table(header, align, rows) -> str:
    cells = [header] + rows
    width = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    sep = ["-" * (w - 1) + (":" if a == "r" else "-") for w, a in zip(width, align)]

    def line(r):
        return "| " + " | ".join(str(c).rjust(w) if a == "r" else str(c).ljust(w)
                                 for c, w, a in zip(r, width, align)) + " |"
    return "\n".join([line(header), line(sep)] + [line(r) for r in rows])


def markdown_report(res: dict) -> str:
    """llama-bench-style Markdown tables of a run_bench() result."""
    size = f"{res['model_size_mib']:.2f} MiB"
    params = f"{res['n_params'] / 1e9:.2f} B"
    base = [res["model_desc"], size, params]
    glass_name = f"glass {res['method']}"
    t = res["threads"]
    rows = []

    def speed(m, s):
        return f"{m:.2f} ± {s:.2f}"

    rows.append(base + ["stock", t, "", f"pp{res['n_prompt']}", speed(res["dense_pp"], res["dense_pp_std"]),
                        "", "", "", "", f"{res['dense_ttft_ms']:.1f}"])
    for r in res["rows"]:
        rows.append(base + [glass_name, t, f"{r['density']:.2f}", f"pp{res['n_prompt']}",
                            speed(r["glass_pp"], r["glass_pp_std"]), f"{r['glass_pp'] / res['dense_pp']:.2f}", "", "",
                            f"{r['mask_ms']:.1f}", f"{r['ttft_ms']:.1f}"])
    for key in sorted(int(k[len("dense_pp_"):]) for k in res if re.fullmatch(r"dense_pp_\d+", k)):
        rows.append(base + ["stock", t, "", f"pp{key}", speed(res[f"dense_pp_{key}"], res[f"dense_pp_{key}_std"]),
                            "", "", "", "", ""])
        rows.append(base + [glass_name, t, f"{res['pp_density']:.2f}", f"pp{key}",
                            speed(res[f"glass_pp_{key}"], res[f"glass_pp_{key}_std"]),
                            f"{res[f'glass_pp_{key}'] / res[f'dense_pp_{key}']:.2f}", "", "", "", ""])
    rows.append(base + ["stock", t, "", f"tg{res['n_gen']}", speed(res["dense_tg"], res["dense_tg_std"]),
                        "1.00", "1.00", "", "", ""])
    for r in res["rows"]:
        rows.append(base + [glass_name, t, f"{r['density']:.2f}", f"tg{res['n_gen']}", speed(r["tg"], r["tg_std"]),
                            f"{r['speedup']:.2f}", f"{r['ideal']:.2f}", f"{r['efficiency']:.2f}",
                            f"{r['mask_ms']:.1f}", ""])
    out = [_table(["model", "size", "params", "engine", "threads", "density", "test", "t/s", "× stock",
                   "ideal", "eff.", "mask ms", "TTFT ms"],
                  ["l", "r", "r", "l", "r", "r", "r", "r", "r", "r", "r", "r", "r"], rows)]

    b = res["bytes_per_token"]
    summary = [["weights read per token (MiB)", f"{b['total'] / 2**20:.1f}",
                f"FFN {b['ffn'] / 2**20:.1f} ({100 * b['ffn_fraction']:.0f}%)", ""],
               [f"time to first token, pp{res['n_prompt']} (ms)", f"{res['dense_ttft_ms']:.1f}",
                f"{res['glass_ttft_ms']:.1f}", f"{100 * res['ttft_overhead']:+.1f}%"]]
    if res.get("rss_dense_mb") is not None:
        summary.append([f"peak RSS (MiB, density {res['rss_density']:g})", f"{res['rss_dense_mb']:.0f}",
                        f"{res['rss_glass_mb']:.0f}", f"{res['rss_ratio']:.2f}×"])
    out.append(_table(["", "stock", "glass-edge", "glass / stock"], ["l", "r", "r", "r"], summary))

    if res.get("ffn_ms_dense") is not None:
        def num(v):
            return "—" if v is None else f"{v:.2f}"

        split = [[f"{r['density']:.2f}", f"{r['ffn_ms']:.1f}", f"{r['other_ms']:.1f}", num(r["ffn_efficiency"]),
                  num(r["ideal_time"]), num(r["efficiency_time"])] for r in res["rows"]]
        out.append(_table(["density", "FFN ms/token", "rest ms/token", "FFN speed × stock's", "time-ideal",
                           "eff. (time)"], ["r"] * 6, split))
    return "\n\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------
# command
# ----------------------------------------------------------------------------------------------

def _write_json(path: pathlib.Path, res: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def bench(args) -> int:
    from tqdm import tqdm

    from .run import resolve_model

    model = resolve_model(args.model)
    json_path = pathlib.Path(args.json) if args.json else None
    if json_path is not None:
        if json_path.is_dir():
            raise UserError(f"--json {json_path} is a directory")
        if not json_path.parent.is_dir():
            raise UserError(f"--json: directory {json_path.parent} does not exist")
        if not os.access(json_path.parent, os.W_OK):
            raise UserError(f"--json: cannot write to {json_path.parent}")
    if args.prior is not None and not os.path.isfile(args.prior):
        raise UserError(f"prior file not found: {args.prior}")
    try:
        sizes = decode_bytes(model)
    except ValueError as e:
        raise UserError(str(e)) from None
    if sizes.ffn == 0:
        raise UserError(f"{model} has no dense FFN weights (blk.N.ffn_up/gate/down) for glass-edge to sparsify")
    cfg = BenchConfig(model=model, densities=list(dict.fromkeys(args.densities)), method=args.method,
                      lam=args.lam, prior=args.prior, n_prompt=args.n_prompt, n_gen=args.n_gen,
                      pp_sizes=list(dict.fromkeys(args.pp_sizes)), threads=args.threads or 0,
                      repetitions=args.repetitions, rss=not args.no_rss, seed=args.seed, verbose=args.verbose,
                      sizes=sizes)
    load = os.getloadavg()[0]
    if load > 1.0:
        print(f"glass-edge: warning: load average {load:.1f} on {os.cpu_count()} CPUs: other processes "
              "compete for the CPU, the figures will be noisy", file=sys.stderr)
    with tqdm(total=_n_steps(cfg), desc="bench", unit="run", file=sys.stderr, leave=False,
              disable=None) as bar:
        def progress(name):
            bar.set_postfix_str(name, refresh=False)
            bar.update(1)
        cfg.progress = progress
        try:
            res = run_bench(cfg)
        except ValueError as e:  # llama-cpp-python reports load failures (and bad priors) as ValueError
            raise UserError(f"cannot benchmark {model}: {e}") from None
    sys.stdout.write(markdown_report(res))
    if json_path is not None:
        _write_json(json_path, res)
        print(f"wrote {json_path}", file=sys.stderr)
    return 0
