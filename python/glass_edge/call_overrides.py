"""Per-call `density=` / `method=` on llama-cpp-python's generation entry points.

`GlassLlama(...)(prompt, density=0.3)`, `create_completion(..., method="dense")` and
`create_chat_completion(..., density=0.7)` take the two extra keywords; they apply to that call
only and the instance's own values come back afterwards. A stream (stream=True) keeps them while
it is being consumed, since llama-cpp-python generates lazily: the overrides are in force while
its chunks are produced, until it ends or is closed. Bad values raise ValueError at call time.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

from .selection import NEEDS_PRIOR, check_density, check_method


def check_overrides(llm, density, method) -> tuple:
    """Validated (density, method); None means 'keep the instance's value'."""
    if density is not None:
        if isinstance(density, bool):
            raise ValueError(f"density must be a number in (0, 1], got {density!r}")
        try:
            density = check_density(density)
        except TypeError:
            raise ValueError(f"density must be a number in (0, 1], got {density!r}") from None
    if method is not None:
        if not isinstance(method, str):
            raise ValueError(f"method must be a string, got {method!r}")
        check_method(method)
        if method in NEEDS_PRIOR:
            llm.global_prior()  # found, or computed once, now: a bad prior fails here (PriorError)
    return density, method


class CallOverrides:
    """Mixin for GlassLlama: per-call sparsity keywords on __call__ / create_*completion."""

    @contextmanager
    def sparsity(self, density: Optional[float] = None, method: Optional[str] = None):
        """`with llm.sparsity(density=0.3): ...` runs the block with other sparsity settings."""
        density, method = check_overrides(self, density, method)
        saved = (self.density, self.method)
        if density is not None:
            self.density = density
        if method is not None:
            self.method = method
        try:
            yield self
        finally:
            self.density, self.method = saved

    def _with_overrides(self, density, method, call):
        if density is None and method is None:
            return call()
        with self.sparsity(density, method):  # validates; a non-streaming call runs here
            result = call()
        if isinstance(result, dict):
            return result
        return self._overridden_stream(density, method, result)

    def _overridden_stream(self, density, method, chunks):
        with self.sparsity(density, method):
            yield from chunks

    def create_completion(self, *args, density: Optional[float] = None, method: Optional[str] = None,
                          **kwargs):
        return self._with_overrides(
            density, method, lambda: super(CallOverrides, self).create_completion(*args, **kwargs))

    def __call__(self, *args, density: Optional[float] = None, method: Optional[str] = None, **kwargs):
        return self._with_overrides(
            density, method, lambda: super(CallOverrides, self).__call__(*args, **kwargs))

    def create_chat_completion(self, *args, density: Optional[float] = None,
                               method: Optional[str] = None, **kwargs):
        return self._with_overrides(
            density, method, lambda: super(CallOverrides, self).create_chat_completion(*args, **kwargs))
