"""Which FFN computation the plug-in does not take over, and the warning that says so.

The plug-in sparsifies the dense FFN of a layer, `blk.N.ffn_{up,gate,down}.weight` (gated, fused
gate+up, or up + down only). Everything else that is FFN work stays with llama.cpp's CPU backend
and runs dense: MoE experts (`ffn_*_exps`) and their router (`ffn_gate_inp`), shared experts
(`ffn_*_shexp`), and any dense FFN weight the plug-in declined (e.g. a type ggml has no CPU dot
product for). Users must hear about it: a model whose FFN bytes are mostly experts gets little or
no speed-up from the density they asked for.
"""
from __future__ import annotations

import re
import warnings
from typing import Optional, Sequence

_FFN_WEIGHT = re.compile(r"^blk\.(\d+)\.(ffn_\w+)\.weight$")
_NOT_COMPUTE = re.compile(r"norm")  # ffn_norm, ffn_post_norm, ...: not matmul weights


def cpu_ffn_tensors(tensor_names: Sequence[str], ffn_n_ff: Sequence[int]) -> dict:
    """{layer: sorted FFN weight kinds left to the CPU}, e.g. {1: ["ffn_down_exps", ...]}.

    ffn_n_ff[il] is the width of the dense FFN the plug-in took for layer il (0 or missing: none).
    """
    left: dict = {}
    for name in tensor_names:
        m = _FFN_WEIGHT.match(name)
        if not m or _NOT_COMPUTE.search(m.group(2)):
            continue
        il, kind = int(m.group(1)), m.group(2)
        taken = il < len(ffn_n_ff) and ffn_n_ff[il] > 0 and kind in ("ffn_up", "ffn_gate", "ffn_down")
        if not taken:
            left.setdefault(il, set()).add(kind)
    return {il: sorted(kinds) for il, kinds in sorted(left.items())}


def _describe(kinds: Sequence[str]) -> str:
    """["ffn_down_exps", "ffn_gate_inp", "ffn_up_exps"] -> "router (ffn_gate_inp), MoE experts (ffn_down_exps, ffn_up_exps)"."""
    labels = {"router": [], "MoE experts": [], "shared expert": [], "dense FFN": []}  # in this order
    for k in sorted(kinds):
        label = ("router" if k.startswith("ffn_gate_inp") else "MoE experts" if k.endswith("_exps")
                 else "shared expert" if k.endswith("_shexp") else "dense FFN")
        labels[label].append(k)
    return ", ".join(f"{label} ({', '.join(ks)})" for label, ks in labels.items() if ks)


def _layer_ranges(layers: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    out, start, prev = [], None, None
    for il in sorted(layers):
        if start is None:
            start = prev = il
        elif il == prev + 1:
            prev = il
        else:
            out.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = prev = il
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
    return ", ".join(out)


def coverage_message(arch: str, n_layer: int, ffn_n_ff: Sequence[int], tensor_names: Sequence[str]) -> Optional[str]:
    """The warning for a model whose FFN work the plug-in only partly takes, or None if it takes all."""
    left = cpu_ffn_tensors(tensor_names, ffn_n_ff)
    sparse = [il for il, nf in enumerate(ffn_n_ff) if nf > 0]
    if not left and sparse:
        return None
    groups: dict = {}  # same tensor kinds -> layers
    for il, kinds in left.items():
        groups.setdefault(tuple(kinds), []).append(il)
    parts = [f"layer{'s' if len(ls) > 1 else ''} {_layer_ranges(ls)}: {_describe(kinds)}"
             for kinds, ls in sorted(groups.items(), key=lambda kv: kv[1][0])]
    if not sparse:
        head = f"glass-edge: no dense FFN in this {arch} model that glass-edge can sparsify; it runs dense"
    else:
        head = (f"glass-edge: {arch} model: only the dense FFN of layer{'s' if len(sparse) > 1 else ''} "
                f"{_layer_ranges(sparse)} (of {n_layer}) is sparsified; this FFN work stays dense on the CPU")
    return head + (" (" + "; ".join(parts) + ")" if parts else "")


def warn_cpu_ffn(llm, stacklevel: int = 3) -> None:
    """Warn (warnings.warn) about FFN work of a loaded GlassLlama left dense on the CPU.

    A model whose every layer has a dense FFN the plug-in took, and no experts, costs nothing
    here; otherwise the file's tensor names (header only) say exactly what stays on the CPU.
    """
    meta = getattr(llm, "metadata", {}) or {}
    arch = meta.get("general.architecture", "?")
    n_ff = list(llm._n_ff)
    try:
        n_layer = int(meta.get(f"{arch}.block_count", len(n_ff)))
    except ValueError:
        n_layer = len(n_ff)
    try:
        n_expert = int(meta.get(f"{arch}.expert_count", 0))
    except ValueError:
        n_expert = 0
    if n_expert == 0 and len(n_ff) >= n_layer and all(nf > 0 for nf in n_ff):
        return
    try:
        from .gguf_file import read_header
        names = [t.name for t in read_header(llm.model_path).tensors]
    except Exception:  # split or unreadable file: fall back to the layer table alone
        names = [f"blk.{il}.ffn_unread.weight" for il in range(n_layer)
                 if il >= len(n_ff) or n_ff[il] == 0]
    msg = coverage_message(arch, n_layer, n_ff, names)
    if msg:
        warnings.warn(msg, stacklevel=stacklevel)
