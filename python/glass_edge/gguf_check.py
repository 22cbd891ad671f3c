"""Up-front checks of a model file, so bad input gets a one-line error instead of a crash
inside llama.cpp."""
from __future__ import annotations

from pathlib import Path


class ModelFileError(ValueError):
    pass


def check_model_file(path) -> str:
    """Returns the model's architecture; raises ModelFileError for a missing or corrupt GGUF."""
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"model file not found: {p}")
    if not p.is_file():
        raise ModelFileError(f"not a file: {p}")
    with p.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelFileError(f"not a GGUF model file: {p}")
    try:
        from gguf import GGUFReader
        reader = GGUFReader(str(p))
        field = reader.fields.get("general.architecture")
        arch = field.contents() if field is not None else None
        for t in reader.tensors:  # tensor data must lie inside the file
            if t.data_offset + t.n_bytes > p.stat().st_size:
                raise ModelFileError(f"truncated GGUF file (tensor {t.name} runs past the end): {p}")
    except ModelFileError:
        raise
    except Exception as e:  # gguf raises assorted errors on corrupt files
        raise ModelFileError(f"corrupt GGUF file {p}: {type(e).__name__}: {e}") from None
    if not arch:
        raise ModelFileError(f"GGUF file has no general.architecture: {p}")
    return str(arch)
