"""Up-front checks of a model file, so bad input gets a one-line error instead of a crash
inside llama.cpp."""
from __future__ import annotations

from pathlib import Path

from .gguf_file import GGUFFormatError, read_header


class ModelFileError(ValueError):
    pass


def check_model_file(path) -> str:
    """Returns the model's architecture; raises ModelFileError for a missing or corrupt GGUF."""
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"model file not found: {p}")
    if not p.is_file():
        raise ModelFileError(f"not a file: {p}")
    try:
        arch = read_header(p).arch
    except GGUFFormatError as e:
        raise ModelFileError(str(e)) from None
    except Exception as e:  # anything else a corrupt header can provoke
        raise ModelFileError(f"corrupt GGUF file {p}: {type(e).__name__}: {e}") from None
    if not arch:
        raise ModelFileError(f"GGUF file has no general.architecture: {p}")
    return str(arch)
