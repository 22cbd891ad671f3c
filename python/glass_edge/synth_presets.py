"""Model shapes for `glass-edge synth` (a plain table: the CLI reads the names without loading
numpy or gguf)."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Preset", "PRESETS", "QUANTS"]


@dataclass(frozen=True)
class Preset:
    arch: str           # general.architecture
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    tied: bool          # output head shares token_embd (no output.weight tensor)
    rope_base: float
    rms_eps: float
    n_ctx: int          # context_length metadata (the model's trained context)
    qkv_bias: bool = False
    llama3_rope: bool = False  # Llama 3.x frequency scaling, stored as a rope_freqs tensor

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# Shapes from the models' public config.json files.
PRESETS = {
    "llama-3.2-1b": Preset("llama", 2048, 8192, 16, 32, 8, 128256, tied=True, rope_base=500000.0,
                           rms_eps=1e-5, n_ctx=131072, llama3_rope=True),
    "llama-3.2-3b": Preset("llama", 3072, 8192, 28, 24, 8, 128256, tied=True, rope_base=500000.0,
                           rms_eps=1e-5, n_ctx=131072, llama3_rope=True),
    "qwen2.5-0.5b": Preset("qwen2", 896, 4864, 24, 14, 2, 151936, tied=True, rope_base=1000000.0,
                           rms_eps=1e-6, n_ctx=32768, qkv_bias=True),
    "tinyllama-1.1b": Preset("llama", 2048, 5632, 22, 32, 4, 32000, tied=False, rope_base=10000.0,
                             rms_eps=1e-5, n_ctx=2048),
    # for tests: seconds to write, same structure as llama-3.2 (tied head, GQA, llama3 rope)
    "tiny": Preset("llama", 256, 1024, 4, 4, 2, 1024, tied=True, rope_base=500000.0,
                   rms_eps=1e-5, n_ctx=4096, llama3_rope=True),
}

# --quant name -> LLAMA_FTYPE_* constant (the usual llama.cpp mix, as llama-quantize makes it)
QUANTS = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
}
