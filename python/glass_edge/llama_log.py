"""Route llama.cpp's (and ggml's) log lines to a Python function for a while, then restore the
callback that was installed before (llama_cpp installs its own on import)."""
from __future__ import annotations

import ctypes
from contextlib import contextmanager

__all__ = ["llama_log_to"]


@contextmanager
def llama_log_to(on_text, echo: bool = False):
    """Inside the block, every log message goes to on_text(level: int, text: str); with echo it
    also goes on to the previous callback (so --verbose still shows it)."""
    import llama_cpp

    old_cb = llama_cpp.llama_log_callback()
    old_ud = ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(old_cb), ctypes.byref(old_ud))

    def forward(level, text, user_data):
        if text:
            on_text(level, text.decode("utf-8", "replace"))
        if echo and old_cb:
            old_cb(level, text, old_ud)

    callback = llama_cpp.llama_log_callback(forward)  # referenced until restored below
    llama_cpp.llama_log_set(callback, None)
    try:
        yield
    finally:
        llama_cpp.llama_log_set(old_cb, old_ud)
