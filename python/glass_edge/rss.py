"""Peak resident memory of one generation, stock llama.cpp vs glass-edge, each in a fresh process.

Peak RSS (VmHWM) is per process, so each engine gets its own child: it loads the model, prefills
the given prompt tokens, decodes the given tokens one at a time, and reports its VmHWM. The stock
child imports only llama_cpp (glass-edge is never registered there); the glass-edge child uses
GlassLlama, whose FFN weights live on the GLASS device.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

__all__ = ["peak_rss_mib"]

_CHILD = r"""
import json, sys
cfg = json.loads(sys.argv[1])
kw = dict(n_ctx=cfg["n_ctx"], n_threads=cfg["threads"], n_threads_batch=cfg["threads"], verbose=False)
if cfg["glass"]:
    from glass_edge import GlassLlama
    llm = GlassLlama(cfg["model"], density=cfg["density"], method=cfg["method"], lam=cfg["lam"],
                     prior=cfg["prior"], **kw)
    llm.prefill(cfg["prompt"])
else:
    from llama_cpp import Llama
    llm = Llama(cfg["model"], **kw)
    llm.eval(cfg["prompt"])
for tok in cfg["gen"]:
    llm.eval([tok])
with open("/proc/self/status") as f:
    hwm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
print(json.dumps({"vmhwm_kb": hwm_kb, "glass_edge_loaded": "glass_edge" in sys.modules}))
"""


def peak_rss_mib(model: str, *, glass: bool, prompt: list, gen: list, n_ctx: int, threads: int,
                 density: float = 1.0, method: str = "griffin", lam=None, prior=None, timeout: float = 900) -> float:
    """Peak RSS in MiB of a child process running one generation (see module doc)."""
    cfg = dict(model=str(model), glass=glass, prompt=[int(t) for t in prompt], gen=[int(t) for t in gen],
               n_ctx=n_ctx, threads=threads, density=density, method=method, lam=lam,
               prior=None if prior is None else str(prior))
    env = dict(os.environ)
    package_root = str(pathlib.Path(os.path.abspath(__file__)).parent.parent)  # where glass_edge is importable from
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"peak-memory child ({'glass-edge' if glass else 'stock'}) failed: {tail}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["glass_edge_loaded"] != glass:
        raise RuntimeError("peak-memory child: glass-edge was loaded in the stock process (or not in the glass one)")
    return out["vmhwm_kb"] / 1024.0
