"""The FFN hidden activations h (the input of every ffn_down matmul) of one prompt evaluation by
stock llama.cpp, run in a subprocess that never imports glass_edge (as stock_reference.py does:
CPU repacking off, one llama_decode of the whole prompt, logits for its last token only).

usage: python stock_ffn_inputs.py MODEL TOKENS_JSON OUT.npz
  Saves h<il> = [n_rows, n_ff] float32 for every layer with a dense ffn_down (the last layer has
  only the output row, as llama.cpp drops the others before its FFN).

The nodes are found through llama.cpp's eval callback (cb_eval): we ask for every matmul whose
weight is `blk.N.ffn_down.weight` and, when it has been computed, copy its input (src[1]), which
is still intact at that moment.
"""
import ctypes
import json
import re
import sys

import llama_cpp as L
import numpy as np

GGML_TYPE_F32 = 0
_DOWN = re.compile(rb"^blk\.(\d+)\.ffn_down\.weight$")


class GgmlTensor(ctypes.Structure):
    """The head of ggml.h's struct ggml_tensor (llama-cpp-python 0.3.36) up to `name`."""
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
    ]


def _tensor(ptr) -> GgmlTensor:
    return ctypes.cast(ptr, ctypes.POINTER(GgmlTensor)).contents


def _down_layer(node: GgmlTensor):
    """Layer index if `node` is a matmul with a dense ffn_down weight, else None."""
    if not node.src[0] or not node.src[1]:
        return None
    m = _DOWN.match(_tensor(node.src[0]).name)
    return int(m.group(1)) if m else None


def main() -> None:
    model_path, prompt_json, out = sys.argv[1:4]
    prompt = json.loads(prompt_json)
    captured: dict = {}

    def callback(ptr, ask, _user):
        node = _tensor(ptr)
        il = _down_layer(node)
        if ask:
            return il is not None
        if il is not None:
            h = _tensor(node.src[1])
            assert h.type == GGML_TYPE_F32 and h.ne[2] == 1 and h.ne[3] == 1, "unexpected ffn_down input"
            n_ff, n_rows = h.ne[0], h.ne[1]
            buf = (ctypes.c_char * (h.nb[1] * n_rows)).from_address(h.data)
            rows = np.frombuffer(buf, dtype=np.uint8).reshape(n_rows, h.nb[1])[:, : n_ff * 4]
            captured[f"h{il}"] = rows.copy().view(np.float32)
        return True  # on the ask=false call: go on computing the graph

    cb = L.ggml_backend_sched_eval_callback(callback)  # kept alive until the end of main
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.use_extra_bufts = False
    model = L.llama_model_load_from_file(model_path.encode(), mp)
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 512, 512, 512, 2, 2
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cp.cb_eval = cb
    cp.cb_eval_user_data = None
    ctx = L.llama_init_from_model(model, cp)
    arr = (L.llama_token * len(prompt))(*prompt)
    if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(prompt))) != 0:
        raise RuntimeError("llama_decode failed")
    if not captured:
        raise RuntimeError("no ffn_down matmul seen by the eval callback")
    np.savez(out, **captured)
    L.llama_free(ctx)
    L.llama_model_free(model)


if __name__ == "__main__":
    main()
