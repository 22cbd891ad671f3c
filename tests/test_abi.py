"""Fails loudly when the installed llama.cpp is not the one the plug-in was built against."""
import ctypes
from pathlib import Path

import llama_cpp

import glass_edge
from glass_edge import _core


def test_built_against_installed_llama_cpp():
    assert _core.built_against_llama_cpp == llama_cpp.__version__ == "0.3.36"


def test_backend_api_version_is_the_one_implemented():
    assert _core.ggml_backend_api_version == 2


def test_glass_device_is_in_llama_cpps_registry():
    # by soname: the wheel holds libggml.so and libggml.so.0 as two separate copies
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml.so.0"))
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    names = [lib.ggml_backend_dev_name(lib.ggml_backend_dev_get(i)) for i in range(lib.ggml_backend_dev_count())]
    assert b"GLASS" in names and b"CPU" in names


def test_version_mismatch_is_reported(monkeypatch):
    monkeypatch.setattr(llama_cpp, "__version__", "0.0.1")
    try:
        glass_edge.check_abi()
    except glass_edge.GlassABIError as e:
        assert "0.3.36" in str(e) and "0.0.1" in str(e)
    else:
        raise AssertionError("a mismatched llama-cpp-python version was not reported")
