"""GlassLlama: a drop-in `llama_cpp.Llama` whose decode runs sparse FFNs.

One generation, as the data flows:
  prefill (stock llama.cpp, dense)  -> statistics (C, collected by the plug-in during prefill)
  -> numpy arrays -> selection (selection.py) -> masks installed in the plug-in
  -> decode (the plug-in computes only the kept neurons) ... until the next prefill clears them.
"""
from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import llama_cpp
import numpy as np

from . import _core, plain_bytes
from .call_overrides import CallOverrides
from .coverage import warn_cpu_ffn
from .chat_template import use_fallback_chat_format
from .selection import DEFAULT_METHOD, NEEDS_LOCAL, NEEDS_PRIOR, check_density, check_lambda, check_method, select

# Model loads and context creations hand weights / contexts to the plug-in through process-wide
# slots: one GlassLlama constructor at a time.
_construct_lock = threading.Lock()

DEFAULT_LAMBDA = 0.5


def _interactive() -> bool:
    import sys
    return sys.stderr.isatty()


@dataclass
class Timings:
    """Wall-clock time of the last generation: dense prompt evaluation, mask selection and
    installation, and the (sparse) decode steps; sampling is not included, as in llama.cpp."""
    prompt_ms: float = 0.0
    prompt_tokens: int = 0
    mask_ms: float = 0.0
    eval_ms: float = 0.0
    eval_tokens: int = 0

    @property
    def prompt_tps(self) -> float:
        return 1e3 * self.prompt_tokens / self.prompt_ms if self.prompt_ms > 0 else 0.0

    @property
    def eval_tps(self) -> float:
        return 1e3 * self.eval_tokens / self.eval_ms if self.eval_ms > 0 else 0.0


class GlassLlama(CallOverrides, llama_cpp.Llama):
    """`llama_cpp.Llama` plus `density` (fraction of FFN neurons kept per layer, 0 < d <= 1),
    `method` (see selection.METHODS), `lam` (GLASS rank-aggregation weight) and `prior`.
    `repack=False` keeps llama.cpp from repacking any weight for the CPU (as its
    use_extra_bufts=false does), e.g. to compare with a reference run that way."""

    def __init__(self, model_path: str, *args, density: float = 0.5, method: str = DEFAULT_METHOD,
                 lam: Optional[float] = None, prior=None, repack: bool = True, **kwargs):
        self.density = check_density(density)
        self.method = check_method(method)
        self.lam = DEFAULT_LAMBDA if lam is None else check_lambda(lam)
        self._prior_arg = prior   # a Prior, a calibrated GGUF path, or None (find or compute one)
        self._prior = None
        self._glass_ctx = _core.Context()
        # Stock placement: FFN weights stay where llama.cpp puts them (repacked where it repacks),
        # so prefill and dense layers run stock kernels; the sparse kernels read the repacked
        # weights' plain bytes from llama.cpp's mapping of the file (plain_bytes.py). Without
        # mmap those bytes are gone, so the plug-in keeps the FFN weights in plain layout itself.
        stock_placement = repack and kwargs.get("use_mmap", True)
        with _construct_lock:
            _core.weights_begin()
            _core.set_claim_all_matmuls(not repack)
            _core.set_stock_placement(stock_placement)
            self._glass_ctx.expect()
            try:
                super().__init__(model_path, *args, **kwargs)
            finally:
                attached = _core.Context.attached()
                _core.set_claim_all_matmuls(False)
                _core.set_stock_placement(False)
            self._glass_model = _core.Model.from_loaded()
        if not attached:
            raise RuntimeError("glass-edge: llama.cpp did not create a GLASS backend for this context")
        use_fallback_chat_format(self, kwargs.get("chat_format"), kwargs.get("chat_handler"))
        self._plain = None
        repacked = self._glass_model.missing_plain()
        if repacked:
            try:
                self._plain = plain_bytes.locate(model_path, repacked)
            except (OSError, ValueError) as e:
                from .errors import UserError
                raise UserError(f"cannot read the file bytes of {model_path}'s repacked FFN weights ({e}); "
                                "load it with repack=False") from None
            for name, (address, _, _) in self._plain.addresses.items():
                # nothing but the sparse path reads a repacked weight's file pages: prepare()
                # copies them to huge pages / builds down's copy and releases them layer by layer
                self._glass_model.set_plain(name, address, releasable=True)
        self._glass_model.prepare(self.n_threads)
        self._glass_ctx.bind(self._glass_model)
        self._n_ff = [layer["n_ff"] for layer in self._glass_model.layers]
        warn_cpu_ffn(self)  # experts, shared experts, ...: say which FFN work stays dense on the CPU
        if self.method in NEEDS_PRIOR or prior is not None:
            self.global_prior()  # resolve it now, so a GLASS model is ready before its first prompt
        self._prefill_pending = False
        self._stats_tokens: list = []   # the prompt tokens the kept statistics cover, from position 0
        self._stats_act = None
        self._stats_imp = None
        self._stats_rows = None
        self.last_masks: list = []
        self.previous_masks: list = []  # the masks installed before last_masks (see mask_overlap)
        self.last_mask_ms = 0.0
        self.timings = Timings()

    # ------------------------------------------------------------------------------------------
    # generation hooks: the first eval() of each generate() is the prefill
    # ------------------------------------------------------------------------------------------

    def generate(self, tokens, *args, **kwargs):
        self._prefill_pending = True
        self.timings = Timings()
        yield from super().generate(tokens, *args, **kwargs)

    def eval(self, tokens):
        t0 = time.perf_counter()
        if not self._prefill_pending:
            super().eval(tokens)
            self.timings.eval_ms += (time.perf_counter() - t0) * 1e3
            self.timings.eval_tokens += len(tokens)
            return
        self._prefill_pending = False
        n_before = self.n_tokens
        self.prefill(tokens)
        self.timings.prompt_ms += (time.perf_counter() - t0) * 1e3 - self.last_mask_ms
        self.timings.prompt_tokens += self.n_tokens - n_before
        self.timings.mask_ms += self.last_mask_ms

    def prefill(self, tokens) -> None:
        """Evaluate prompt tokens densely (after the n_tokens already in the KV cache), collect their
        statistics, then select and install the decode masks."""
        tokens = list(tokens)
        self._glass_ctx.clear_masks()
        if not tokens:  # the whole prompt was cached: keep the statistics and masks it had
            self._install(self._stats_act, self._stats_imp, self._stats_rows)
            return
        if self.method not in NEEDS_LOCAL or not any(self._n_ff):
            self._stats_tokens, self._stats_act = [], None  # these tokens go uncounted: forget the sums
            super().eval(tokens)
            self._install(None, None, None)
            return
        start = self.n_tokens
        covered = len(self._stats_tokens)
        extends = (start > 0 and covered <= start and self._stats_act is not None
                   and list(self.input_ids[:covered]) == self._stats_tokens)
        if start > 0 and not extends:
            # a reused prefix whose statistics we no longer have: prefill it again
            self.timings.prompt_tokens += start  # eval() counts only the tokens it was given
            tokens = list(self.input_ids[:start]) + tokens
            self.n_tokens = start = 0
        bos = self.token_bos()
        skip_first = start == 0 and tokens[0] == bos
        self._glass_ctx.stats_begin(skip_first, min(len(tokens), self.context_params.n_ubatch))
        try:
            super().eval(tokens)
        finally:
            self._glass_ctx.stats_end()
        act = [np.asarray(a, dtype=np.float64) for a in self._glass_ctx.act_stats()]
        imp = [np.asarray(a, dtype=np.float64) for a in self._glass_ctx.imp_stats()]
        rows = list(self._glass_ctx.stats_rows())
        if start > 0:  # statistics are sums over tokens: add the kept prefix's
            act = [a + b for a, b in zip(act, self._stats_act)]
            imp = [a + b for a, b in zip(imp, self._stats_imp)]
            rows = [a + b for a, b in zip(rows, self._stats_rows)]
        # the KV sequence these statistics belong to (generated tokens in it were never prefilled)
        self._stats_tokens = list(self.input_ids[: self.n_tokens])
        self._stats_act, self._stats_imp, self._stats_rows = act, imp, rows
        self._install(act, imp, rows)

    def _install(self, act, imp, rows) -> None:
        t0 = time.perf_counter()
        prior = self.global_prior() if self.method in NEEDS_PRIOR else self._prior
        masks = select(self.method, self.density, n_ff=self._n_ff, local_act=act, local_imp=imp,
                       local_rows=rows, prior=prior, lam=self.lam)
        self.install_masks(masks)
        self.last_mask_ms = (time.perf_counter() - t0) * 1e3

    def install_masks(self, masks) -> None:
        """Install per-layer masks (ascending neuron indices, or None for a dense layer) now; they
        apply to every following eval of any batch size until the next prefill or clear_masks()."""
        self._glass_ctx.clear_masks()
        for il, m in enumerate(masks):
            if m is not None:
                self._glass_ctx.set_mask(il, np.asarray(m, dtype=np.int32))
        self.previous_masks, self.last_masks = self.last_masks, list(masks)

    def clear_masks(self) -> None:
        self._glass_ctx.clear_masks()
        self.last_masks = []

    # ------------------------------------------------------------------------------------------
    # the global prior (prior.py): explicit, from the model file, cached, or computed on first use
    # ------------------------------------------------------------------------------------------

    def global_prior(self):
        """This model's global prior (resolved on first use; see prior.resolve_prior)."""
        if self._prior is None:
            from .prior import resolve_prior
            self._prior = resolve_prior(self, self._prior_arg, progress=self.verbose or _interactive())
        return self._prior

    @property
    def prior(self):
        return self._prior if self._prior is not None else self._prior_arg

    @prior.setter
    def prior(self, value):
        self._prior_arg, self._prior = value, None

    @property
    def ffn_widths(self) -> list:
        """Per layer, the FFN width the plug-in sparsifies (0 for a layer it leaves to the CPU)."""
        return list(self._n_ff)

    # ------------------------------------------------------------------------------------------
    # introspection
    # ------------------------------------------------------------------------------------------

    @property
    def sparse_ops(self) -> int:
        """How many FFN matmuls the plug-in has computed sparse in this context so far."""
        return self._glass_ctx.n_sparse_ops

    @property
    def ffn_seconds(self) -> float:
        """Wall time this context has spent computing FFN layers (dense or sparse) so far."""
        return self._glass_ctx.ffn_seconds

    def mask_densities(self) -> list:
        """Per-layer kept fraction of the installed masks (1.0 for a dense layer)."""
        return [1.0 if m is None else len(m) / nf for m, nf in zip(self.last_masks, self._n_ff) if nf]

    def mask_overlap(self) -> Optional[list]:
        """Per layer, the fraction of the last mask's neurons that the mask installed before it also
        kept: |last ∩ previous| / |last| (a dense layer counts as all its neurons). 1.0 means the
        last mask kept nothing new; at equal densities it is symmetric. None before a second mask."""
        if not self.previous_masks or not self.last_masks:
            return None
        out = []
        for a, b, nf in zip(self.last_masks, self.previous_masks, self._n_ff):
            if nf:
                a = np.arange(nf) if a is None else np.asarray(a)
                b = np.arange(nf) if b is None else np.asarray(b)
                out.append(np.intersect1d(a, b, assume_unique=True).size / a.size)
        return out
