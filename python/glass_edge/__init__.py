"""glass-edge: faster llama.cpp decode on CPUs by training-free dynamic FFN sparsification (GLASS).

Importing this package registers the GLASS ggml device with llama.cpp (before any model loads):
models loaded afterwards keep their FFN weights on it, and `GlassLlama` runs their decode sparse.
"""
import llama_cpp  # noqa: F401  -- load llama.cpp's ggml first: the plug-in joins that registry

from ._abi import GlassABIError, check_abi

check_abi()

from .llama import GlassLlama  # noqa: E402
from .selection import METHODS  # noqa: E402

__version__ = "0.1.0"
__all__ = ["GlassLlama", "GlassABIError", "METHODS", "__version__"]
