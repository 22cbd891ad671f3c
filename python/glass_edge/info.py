"""`glass-edge info MODEL`: architecture, FFN shapes and quant types per tensor, glass.* summary."""
from __future__ import annotations

import re
from collections import Counter

from gguf import GGMLQuantizationType

from .errors import UserError
from .gguf_file import GGUFFormatError, read_header
from .gguf_meta import ffn_widths, read_prior
from .prior import PriorError

_FFN = re.compile(r"^blk\.(\d+)\.(ffn_(?:up|gate|down)(?:_exps|_shexp)?)\.weight$")


def _type_name(t: int) -> str:
    try:
        return GGMLQuantizationType(t).name
    except ValueError:
        return f"type{t}"


def describe(path) -> str:
    h = read_header(path)
    arch = h.arch or "?"
    kv = h.kv
    lines = [f"model        {path}",
             f"architecture {arch}   name {kv.get('general.name', '?')}   file type {kv.get('general.file_type', '?')}",
             f"layers       {kv.get(f'{arch}.block_count', '?')}   n_embd {kv.get(f'{arch}.embedding_length', '?')}"
             f"   n_ff {kv.get(f'{arch}.feed_forward_length', '?')}   "
             f"size {h.file_size / 2**20:.1f} MiB in {len(h.tensors)} tensors"]
    ffn = {}
    for t in h.tensors:
        m = _FFN.match(t.name)
        if m:
            ffn.setdefault(int(m.group(1)), []).append(t)
    ffn_bytes = sum(t.n_bytes for ts in ffn.values() for t in ts)
    total = sum(t.n_bytes for t in h.tensors)
    lines.append(f"FFN weights  {ffn_bytes / 2**20:.1f} MiB ({100 * ffn_bytes / max(total, 1):.0f}% of tensor bytes)")
    lines.append("")
    lines.append("layer  tensor           shape (ne0 x ne1 [x ne2])   type")
    for il in sorted(ffn):
        for t in sorted(ffn[il], key=lambda t: t.name):
            shape = " x ".join(str(n) for n in t.shape)
            lines.append(f"{il:5d}  {_FFN.match(t.name).group(2):15s}  {shape:26s}  {_type_name(t.type)}")
    if not ffn:
        lines.append("  (no FFN weight tensors found: glass-edge leaves this model dense)")
    other = Counter(_type_name(t.type) for t in h.tensors if not _FFN.match(t.name))
    lines.append("other tensors: " + ", ".join(f"{n} {name}" for name, n in other.most_common()))
    lines.append("")
    try:
        prior = read_prior(path, h)
    except PriorError as e:
        lines.append(f"glass prior  INVALID: {e}")
        return "\n".join(lines)
    if prior is None:
        lines.append("glass prior  none (a GLASS method computes one on first use; "
                     "`glass-edge calibrate` stores one in a copy)")
    else:
        lines.append(f"glass prior  version {kv.get('glass.version')}: {prior.describe()}")
        lines.append(f"             settings {prior.settings}")
        widths = [w for w in ffn_widths(h) if w]
        top = [float(prior.act_score[il][prior.act_rank[il] < max(1, w // 10)].sum() / max(prior.act_score[il].sum(), 1e-30))
               for il, w in enumerate(ffn_widths(h)) if w]
        if widths:
            lines.append(f"             activation mass in each layer's top 10% neurons: "
                         f"min {min(top):.2f} / mean {sum(top) / len(top):.2f} / max {max(top):.2f}")
    return "\n".join(lines)


def info(args) -> int:
    from .run import resolve_model
    model = resolve_model(args.model)
    try:
        print(describe(model))
    except GGUFFormatError as e:
        raise UserError(str(e)) from None
    return 0
