"""The glass.* GGUF metadata extension: a model's global prior stored inside a copy of the model.

Keys (version 1):
  glass.version            u32   1
  glass.source             str   "nps" or "corpus:<names>"
  glass.n_tokens           u64   tokens the statistics were accumulated over
  glass.settings           str   JSON: how the prior was made (sampling, seed, sizes)
  glass.n_layer            u32   must equal <arch>.block_count
  glass.n_ff               [u32] per layer; must equal the width of blk.N.ffn_down (0: no dense FFN)
  glass.act_rank.N         [i32] layer N's neurons ranked by the activation statistic (0 = most important)
  glass.imp_rank.N         [i32] same for the impact statistic
  glass.act_score.N        [f32] the raw activation statistic (mean over tokens)
  glass.imp_score.N        [f32] the raw impact statistic
(layers with no dense FFN have no per-layer keys.)

The copy is streamed: the input's key/value bytes and tensor infos are reused verbatim (minus any
old glass.* keys), the new keys are appended, and the tensor data is copied in chunks, so memory
stays bounded for multi-GB models. Output goes to a temp file in the target folder and is renamed
into place when complete; the input file is only ever read.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .gguf_file import ARRAY, F32, I32, STRING, U32, U64, GGUFFormatError, pack_kv, read_header
from .prior import Prior, PriorError

GLASS_VERSION = 1
PREFIX = "glass."
COPY_CHUNK = 16 << 20


def ffn_widths(header) -> list:
    """Per layer, the dense FFN width (ffn_down's row length), 0 where there is none."""
    n_layer = int(header.kv.get(f"{header.arch}.block_count", 0))
    by_name = {t.name: t for t in header.tensors}
    widths = []
    for il in range(n_layer):
        t = by_name.get(f"blk.{il}.ffn_down.weight")
        widths.append(int(t.shape[0]) if t is not None else 0)
    return widths


# ----------------------------------------------------------------------------------------------
# reading and validating
# ----------------------------------------------------------------------------------------------

def read_prior(path, header=None) -> Optional[Prior]:
    """The prior stored in a GGUF's glass.* keys, None if it has none; PriorError if they are
    corrupt or do not fit the model in the same file."""
    try:
        h = header or read_header(path)
    except GGUFFormatError as e:
        raise PriorError(str(e)) from None
    kv = h.kv
    if f"{PREFIX}version" not in kv:
        if any(k.startswith(PREFIX) for k in kv):
            raise PriorError(f"{path}: glass.* metadata without glass.version")
        return None

    def bad(msg):
        return PriorError(f"{path}: glass metadata {msg}")

    version = kv[f"{PREFIX}version"]
    if version != GLASS_VERSION:
        raise bad(f"version {version} is not supported (this glass-edge reads version {GLASS_VERSION})")
    widths = ffn_widths(h)
    n_layer = kv.get(f"{PREFIX}n_layer")
    if n_layer != len(widths):
        raise bad(f"is for {n_layer} layers but the model has {len(widths)}")
    n_ff = kv.get(f"{PREFIX}n_ff")
    if not isinstance(n_ff, np.ndarray) or n_ff.size != len(widths):
        raise bad("glass.n_ff is missing or has the wrong length")
    act, imp, act_r, imp_r = [], [], [], []
    for il, (nf, width) in enumerate(zip(n_ff.tolist(), widths)):
        if nf != width:
            raise bad(f"layer {il} has n_ff {nf} but the model's FFN there is {width} wide")
        arrays = []
        for name in ("act_score", "imp_score", "act_rank", "imp_rank"):
            a = kv.get(f"{PREFIX}{name}.{il}", np.zeros(0)) if nf else np.zeros(0)
            if not isinstance(a, np.ndarray) or a.size != nf:
                raise bad(f"glass.{name}.{il} is missing or has the wrong length")
            arrays.append(a)
        s_act, s_imp, r_act, r_imp = arrays
        if not (np.all(np.isfinite(s_act)) and np.all(np.isfinite(s_imp))):
            raise bad(f"layer {il} has non-finite scores")
        for r in (r_act, r_imp):
            if nf and not np.array_equal(np.sort(r), np.arange(nf)):
                raise bad(f"layer {il} has a rank vector that is not a permutation of 0..{nf - 1}")
        act.append(s_act), imp.append(s_imp), act_r.append(r_act), imp_r.append(r_imp)
    try:
        settings = json.loads(kv.get(f"{PREFIX}settings", "{}"))
    except ValueError:
        raise bad("glass.settings is not JSON") from None
    return Prior(act_score=act, imp_score=imp, source=str(kv.get(f"{PREFIX}source", "?")),
                 n_tokens=int(kv.get(f"{PREFIX}n_tokens", 0)), settings=settings,
                 act_rank=act_r, imp_rank=imp_r)


# ----------------------------------------------------------------------------------------------
# writing: a streamed copy with the glass.* keys
# ----------------------------------------------------------------------------------------------

def prior_kv_bytes(prior: Prior) -> list:
    out = [pack_kv(f"{PREFIX}version", GLASS_VERSION, U32),
           pack_kv(f"{PREFIX}source", prior.source, STRING),
           pack_kv(f"{PREFIX}n_tokens", int(prior.n_tokens), U64),
           pack_kv(f"{PREFIX}settings", json.dumps(prior.settings, sort_keys=True), STRING),
           pack_kv(f"{PREFIX}n_layer", prior.n_layer, U32),
           pack_kv(f"{PREFIX}n_ff", np.array(prior.n_ff, dtype=np.uint32), ARRAY, U32)]
    for il, nf in enumerate(prior.n_ff):
        if nf:
            out += [pack_kv(f"{PREFIX}act_rank.{il}", prior.act_rank[il], ARRAY, I32),
                    pack_kv(f"{PREFIX}imp_rank.{il}", prior.imp_rank[il], ARRAY, I32),
                    pack_kv(f"{PREFIX}act_score.{il}", prior.act_score[il], ARRAY, F32),
                    pack_kv(f"{PREFIX}imp_score.{il}", prior.imp_score[il], ARRAY, F32)]
    return out


def write_with_prior(src, dst, prior: Prior, progress: Optional[Callable[[int], None]] = None) -> None:
    """Copy GGUF `src` to `dst` with `prior` in its glass.* keys (replacing any it had)."""
    src, dst = Path(src), Path(dst)
    h = read_header(src)
    prior.check_fits(ffn_widths(h), f"model {src.name}")
    if src.resolve() == dst.resolve():
        raise PriorError("the output must be a new file: glass-edge never modifies its input model")
    kept = [k for k in h.kv if not k.startswith(PREFIX)]
    new_kv = prior_kv_bytes(prior)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as f:
            out.write(b"GGUF" + struct.pack("<IQQ", h.version, len(h.tensors), len(kept) + len(new_kv)))
            for k in kept:
                a, b = h.kv_span[k]
                f.seek(a)
                out.write(f.read(b - a))
            for blob in new_kv:
                out.write(blob)
            a, b = h.tensor_info_span
            f.seek(a)
            out.write(f.read(b - a))
            # tensor offsets are relative to the data section: pad to the alignment, copy it as is
            out.write(b"\0" * (-out.tell() % h.alignment))
            f.seek(h.data_offset)
            remaining = h.file_size - h.data_offset
            while remaining > 0:
                chunk = f.read(min(COPY_CHUNK, remaining))
                if not chunk:
                    raise PriorError(f"{src} ended early while copying")
                out.write(chunk)
                remaining -= len(chunk)
                if progress:
                    progress(len(chunk))
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
