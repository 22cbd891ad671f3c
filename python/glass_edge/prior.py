"""The global prior: per layer, how much each FFN neuron matters over a large amount of text.

A prior holds, per layer, the activation and impact statistics (see kernels/stats.h) averaged over
every token of its source -- text the model generated itself (NPS) or a corpus -- and their ranks
(0 = most important; ties to the lower index, as in selection.ranks_from_scores).

Where a model's prior comes from, in order (resolve_prior):
  1. an explicit prior: a Prior, or a calibrated GGUF given with --prior / prior="file.gguf";
  2. the model file's own glass.* metadata (written by `glass-edge calibrate`);
  3. glass-edge's cache, keyed by the sha256 of the model file's content;
  4. computed now with NPS (a modest size, with a progress bar) and stored in that cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .default_model import CACHE_DIR
from .selection import ranks_from_scores

PRIOR_CACHE_DIR = CACHE_DIR / "priors"

# size of the prior computed on first use (calibrate's own defaults are larger)
FIRST_USE_SAMPLES = 32
FIRST_USE_TOKENS = 128


class PriorError(ValueError):
    """A prior that is missing, corrupt or does not fit the model."""


@dataclass
class Prior:
    act_score: list                 # per layer: float32 [n_ff] (empty for a layer with no dense FFN)
    imp_score: list
    source: str = "nps"             # "nps" or "corpus:<names>"
    n_tokens: int = 0               # tokens the statistics were accumulated over
    settings: dict = field(default_factory=dict)  # how it was made (sampling, seed, sizes)
    act_rank: list = field(default=None, repr=False)
    imp_rank: list = field(default=None, repr=False)

    def __post_init__(self):
        self.act_score = [np.asarray(a, dtype=np.float32) for a in self.act_score]
        self.imp_score = [np.asarray(a, dtype=np.float32) for a in self.imp_score]
        if len(self.act_score) != len(self.imp_score):
            raise PriorError("prior has different layer counts for activation and impact")
        if self.act_rank is None:
            self.act_rank = [ranks_from_scores(a).astype(np.int32) for a in self.act_score]
        if self.imp_rank is None:
            self.imp_rank = [ranks_from_scores(a).astype(np.int32) for a in self.imp_score]
        self.act_rank = [np.asarray(r, dtype=np.int32) for r in self.act_rank]
        self.imp_rank = [np.asarray(r, dtype=np.int32) for r in self.imp_rank]

    @property
    def n_layer(self) -> int:
        return len(self.act_score)

    @property
    def n_ff(self) -> list:
        return [int(a.size) for a in self.act_score]

    def check_fits(self, n_ff, what: str = "this model") -> "Prior":
        """Raise PriorError unless the prior has the model's layer count and FFN widths."""
        n_ff = [int(n) for n in n_ff]
        if self.n_layer != len(n_ff):
            raise PriorError(f"prior has {self.n_layer} layers but {what} has {len(n_ff)}")
        for il, (a, b) in enumerate(zip(self.n_ff, n_ff)):
            if a != b:
                raise PriorError(f"prior layer {il} has n_ff {a} but {what} has {b}")
        return self

    def describe(self) -> str:
        widths = sorted(set(n for n in self.n_ff if n))
        return (f"{self.source}, {self.n_tokens} tokens, {self.n_layer} layers, "
                f"n_ff {'/'.join(map(str, widths)) or '-'}")


# ----------------------------------------------------------------------------------------------
# prior files in the cache (.npz), written to a temp file and renamed
# ----------------------------------------------------------------------------------------------

def save_npz(prior: Prior, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"act_{il}": a for il, a in enumerate(prior.act_score)}
    arrays.update({f"imp_{il}": a for il, a in enumerate(prior.imp_score)})
    meta = json.dumps({"version": 1, "n_layer": prior.n_layer, "source": prior.source,
                       "n_tokens": prior.n_tokens, "settings": prior.settings})
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.part")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(meta), **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_npz(path) -> Prior:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            n = int(meta["n_layer"])
            return Prior(act_score=[z[f"act_{il}"] for il in range(n)],
                         imp_score=[z[f"imp_{il}"] for il in range(n)],
                         source=meta["source"], n_tokens=int(meta["n_tokens"]),
                         settings=meta.get("settings", {}))
    except PriorError:
        raise
    except Exception as e:
        raise PriorError(f"corrupt prior file {path}: {type(e).__name__}: {e}") from None


# ----------------------------------------------------------------------------------------------
# the content-hash cache
# ----------------------------------------------------------------------------------------------

def file_sha256(path) -> str:
    """sha256 of the file's bytes, remembered per (path, size, mtime) so a model is hashed once."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    index_path = PRIOR_CACHE_DIR / "hashes.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key in index:
        return index[key]
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    index[key] = digest
    PRIOR_CACHE_DIR.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=PRIOR_CACHE_DIR, suffix=".json.part")
    with os.fdopen(fd, "w") as f:
        json.dump(index, f)
    os.replace(tmp, index_path)
    return digest


def cached_prior_path(model_path) -> Path:
    return PRIOR_CACHE_DIR / f"{file_sha256(model_path)}.npz"


# ----------------------------------------------------------------------------------------------
# resolution: explicit > the model's own metadata > cache > computed now
# ----------------------------------------------------------------------------------------------

def load_prior_file(path) -> Prior:
    """A prior from a calibrated GGUF (glass.* metadata) or a cached .npz."""
    p = Path(path)
    if not p.is_file():
        raise PriorError(f"prior file not found: {p}")
    if p.suffix == ".npz":
        return load_npz(p)
    from .gguf_meta import read_prior
    prior = read_prior(p)
    if prior is None:
        raise PriorError(f"{p} has no glass.* prior metadata (make one with `glass-edge calibrate`)")
    return prior


def resolve_prior(llm, prior, *, compute: bool = True, progress: bool = True) -> Optional[Prior]:
    """The prior for a loaded GlassLlama (see the module docstring for the order)."""
    n_ff = llm.ffn_widths
    if isinstance(prior, Prior):
        return prior.check_fits(n_ff)
    if prior is not None:
        return load_prior_file(prior).check_fits(n_ff, f"model {Path(llm.model_path).name}")
    from .gguf_meta import read_prior
    own = read_prior(llm.model_path)
    if own is not None:
        return own.check_fits(n_ff)
    cached = cached_prior_path(llm.model_path)
    if cached.is_file():
        try:
            return load_npz(cached).check_fits(n_ff)
        except PriorError:
            pass  # a stale or broken cache entry: compute it again
    if not compute:
        return None
    from .calibrate import compute_nps_prior
    p = compute_nps_prior(llm, samples=FIRST_USE_SAMPLES, tokens=FIRST_USE_TOKENS, seed=0, progress=progress,
                          desc="glass-edge: computing this model's global prior (once)")
    save_npz(p, cached)
    return p
