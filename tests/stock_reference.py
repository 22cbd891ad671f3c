"""Stock llama.cpp reference, run in a subprocess that never imports glass_edge (so the GLASS
device is not registered): llama-cpp-python's low-level API, CPU weight repacking off
(use_extra_bufts=False, whose numerics differ slightly from the plain kernels).

usage: python stock_reference.py MODEL TOKENS_JSON N_GREEDY OUT.npz [--teacher JSON]
  Evaluates the prompt tokens, then greedily decodes N_GREEDY tokens (or, with --teacher, feeds
  the given tokens one at a time). Saves `tokens` (generated) and `logits` [n_steps, n_vocab]:
  the logits after the prompt and after each fed token.
"""
import json
import sys

import llama_cpp as L
import numpy as np


def main() -> None:
    model_path, prompt_json, n_greedy, out = sys.argv[1:5]
    teacher = json.loads(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[5] == "--teacher" else None
    prompt = json.loads(prompt_json)
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.use_extra_bufts = False
    model = L.llama_model_load_from_file(model_path.encode(), mp)
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 512, 512, 512, 2, 2
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as llama_cpp.Llama by default
    ctx = L.llama_init_from_model(model, cp)
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))

    def feed(tokens):
        arr = (L.llama_token * len(tokens))(*tokens)
        if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(tokens))) != 0:
            raise RuntimeError("llama_decode failed")
        return np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()

    logits = [feed(prompt)]
    generated = []
    steps = teacher if teacher is not None else range(int(n_greedy))
    for item in steps:
        tok = int(item) if teacher is not None else int(np.argmax(logits[-1]))
        generated.append(tok)
        logits.append(feed([tok]))
    np.savez(out, tokens=np.array(generated, dtype=np.int64), logits=np.array(logits[:-1] if teacher is None else logits))
    L.llama_free(ctx)
    L.llama_model_free(model)


if __name__ == "__main__":
    main()
