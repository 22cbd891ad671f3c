"""The llama.cpp ABI check: the plug-in implements ggml's private backend vtables, so it only
works inside the exact llama-cpp-python it was compiled against."""
import llama_cpp

from . import _core


class GlassABIError(ImportError):
    pass


def check_abi() -> None:
    built = _core.built_against_llama_cpp
    found = getattr(llama_cpp, "__version__", "unknown")
    if found != built:
        raise GlassABIError(
            f"glass-edge was built against llama-cpp-python {built} but {found} is installed; "
            f"reinstall glass-edge (or pip install llama-cpp-python=={built})"
        )
    if not _core.register_plugin():
        raise GlassABIError(
            "glass-edge could not register its ggml device with llama.cpp "
            "(a second copy of libggml was loaded); reinstall glass-edge"
        )
