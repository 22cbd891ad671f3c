"""Shared pytest fixtures for glass-edge."""
from __future__ import annotations

import inspect

import pytest

from glass_edge.synth_tiny import write_tiny_model


# ---------------------------------------------------------------------------------------------
# tiny synthetic GGUF files (written once per session, never loaded here)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """tiny_model_factory(arch, ftype, **kw) -> path of a tiny random GGUF (see synth_tiny).

    Files go to one session tmp dir and are cached by their full argument set, so
    ("llama", "f32") and ("llama", "f32", n_layer=2) share one file.
    """
    root = tmp_path_factory.mktemp("tiny_models")
    sig = inspect.signature(write_tiny_model)
    cache = {}

    def make(arch="llama", ftype="f32", **kw):
        bound = sig.bind(root / "unused", arch, ftype, **kw)
        bound.apply_defaults()
        args = {k: v for k, v in bound.arguments.items() if k != "path"}
        key = tuple(sorted(args.items()))
        if key not in cache:
            name = "-".join(f"{v}" for _, v in key) + ".gguf"
            cache[key] = write_tiny_model(root / name, **args)
        return cache[key]

    return make


# ---------------------------------------------------------------------------------------------
# (model fixtures go below)
# ---------------------------------------------------------------------------------------------
