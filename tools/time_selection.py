"""Time mask selection for a Llama-3.2-1B-shaped model (16 layers x n_ff 8192): numpy vs C++.

    PYTHONPATH=python python3 tools/time_selection.py [--method a-glass] [--density 0.4] [--reps 20]

Prints the median and best milliseconds of selection.select() for each path (it is part of the
time to first token) and checks that both give the same masks.
"""
import argparse
import statistics
import time
from types import SimpleNamespace

import numpy as np

from glass_edge import selection as sel


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="a-glass", choices=["griffin", "global", "a-glass", "i-glass"])
    ap.add_argument("--density", type=float, default=0.4)
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--n-ff", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()

    rng = np.random.default_rng(0)
    n_ff = [a.n_ff] * a.layers
    # like GlassLlama's: float32 sums from the plug-in, as float64; the prior's int32 ranks
    act = [rng.lognormal(0, 1, n).astype(np.float32).astype(np.float64) for n in n_ff]
    imp = [rng.lognormal(0, 1, n).astype(np.float32).astype(np.float64) for n in n_ff]
    prior = SimpleNamespace(act_rank=[rng.permutation(n).astype(np.int32) for n in n_ff],
                            imp_rank=[rng.permutation(n).astype(np.int32) for n in n_ff])
    kw = dict(n_ff=n_ff, local_act=act, local_imp=imp, local_rows=[100] * a.layers, prior=prior, lam=a.lam)

    paths = {"numpy": sel._select_numpy, "C++": sel.select}
    if sel._cpp() is None:
        print("glass_edge._core has no selection: select() is numpy too")
    out = {}
    for name, fn in paths.items():
        out[name] = fn(a.method, a.density, **kw)   # warm-up
        ms = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            fn(a.method, a.density, **kw)
            ms.append((time.perf_counter() - t0) * 1e3)
        print(f"{name:6s} {a.method} d={a.density} {a.layers}x{a.n_ff}: "
              f"median {statistics.median(ms):7.2f} ms   best {min(ms):7.2f} ms")
    same = all(np.array_equal(x, y) for x, y in zip(out["numpy"], out["C++"]))
    print("masks identical:", same)


if __name__ == "__main__":
    main()
