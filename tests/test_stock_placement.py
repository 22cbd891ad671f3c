"""Stock placement (GlassLlama's default): FFN weights stay where llama.cpp puts them, repacked for
the CPU where it repacks (Q4_0, Q4_K on x86), and the sparse kernels read the plain bytes from
llama.cpp's mapping of the model file (plain_bytes.py).

References: stock llama_cpp.Llama in this process, loaded with the plug-in switched off (the same
repacked kernels, the same threads), so a full mask must give stock's logits to float rounding
of the split graph (1e-5), and the sparse kernels forced on a full mask must stay within the
tolerances of the unrepacked tests (test_plugin.py).
"""
from pathlib import Path

import numpy as np
import pytest

from glass_edge import GlassLlama, plain_bytes
from glass_edge.bench import load_stock
from glass_edge.synth_tiny import write_tiny_model
from reference_runs import assert_sparse_kernels_follow, greedy

PROMPT = "the quick brown fox jumps over the lazy dog and the cat"
KW = dict(n_ctx=512, n_batch=512, n_threads=2, n_threads_batch=2, verbose=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("stock-placement")


def tiny(model_dir: Path, ftype: str) -> Path:
    path = model_dir / f"llama-{ftype}.gguf"
    if not path.exists():
        write_tiny_model(path, arch="llama", ftype=ftype)
    return path


def test_plain_bytes_finds_llama_mapping(model_dir):
    """Repacked weights' bytes are found inside llama.cpp's own mapping (or, for those in the part
    of the file llama.cpp unmapped, in a mapping of our own), and equal the file's."""
    path = tiny(model_dir, "q4_0")
    llm = GlassLlama(str(path), density=0.5, **KW)
    assert llm._plain is not None and llm._plain.addresses, "nothing was repacked: the test proves nothing"
    data = path.read_bytes()
    from glass_edge.gguf_file import read_header
    header = read_header(path)
    infos = {t.name: t for t in header.tensors}
    import ctypes
    assert any(in_map for _, _, in_map in llm._plain.addresses.values())
    for name, (address, n, in_llama_map) in llm._plain.addresses.items():
        if in_llama_map and name.endswith("ffn_down.weight"):
            continue  # its pages were released after the packed copy was built
        pos = header.data_offset + infos[name].offset
        assert ctypes.string_at(address, 256) == data[pos:pos + 256]
        assert ctypes.string_at(address + n - 256, 256) == data[pos + n - 256:pos + n]


def test_locate_maps_what_llama_does_not(model_dir):
    """Outside any existing mapping, locate() maps the bytes itself (same bytes as the file)."""
    path = tiny(model_dir, "q4_k")
    from glass_edge.gguf_file import read_header
    header = read_header(path)
    t = next(t for t in header.tensors if t.name == "blk.1.ffn_up.weight")
    pb = plain_bytes.locate(path, [(t.name, t.n_bytes)])
    address, n, in_llama_map = pb.addresses[t.name]
    assert not in_llama_map and n == t.n_bytes
    import ctypes
    pos = header.data_offset + t.offset
    assert ctypes.string_at(address, n) == path.read_bytes()[pos:pos + n]
    pb.close()
    with pytest.raises(ValueError):
        plain_bytes.locate(path, [("blk.9.ffn_up.weight", 10)])


@pytest.mark.parametrize("ftype", ["q4_0", "q4_k"])
def test_full_mask_is_stock(model_dir, ftype):
    """density 1.0: stock's repacked kernels run the FFN: same greedy text and logits."""
    path = tiny(model_dir, ftype)
    ref, _ = load_stock(str(path), logits_all=False, **KW)
    prompt = ref.tokenize(PROMPT.encode())
    ref_tokens, ref_logits = greedy(ref, prompt)
    llm = GlassLlama(str(path), density=1.0, method="griffin", logits_all=False, **KW)
    assert llm._plain is not None and llm._plain.addresses
    tokens, logits = greedy(llm, prompt)
    assert all(m is not None and len(m) == 512 for m in llm.last_masks)
    assert tokens == ref_tokens
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ftype", ["q4_0", "q4_k"])
def test_sparse_kernels_read_the_plain_bytes(model_dir, ftype):
    """The sparse kernels forced on a full mask (plain rows from the file mapping, the packed
    down) follow stock's repacked run: teacher-forced along stock's greedy text, mean |error|
    within 3% of the logits' spread, max within 15%, argmax agreeing on 90% of the steps (the
    bounds of test_plugin's unrepacked test; a wrong row or wrong bytes is far outside them)."""
    path = tiny(model_dir, ftype)
    ref, _ = load_stock(str(path), logits_all=False, **KW)
    prompt = ref.tokenize(PROMPT.encode())
    ref_tokens, ref_logits = greedy(ref, prompt)
    llm = GlassLlama(str(path), density=1.0, method="griffin", logits_all=True, **KW)
    assert_sparse_kernels_follow(llm, prompt, ref_tokens, ref_logits)


def test_sparse_decode_matches_unrepacked_sparse_decode(model_dir):
    """The same masks through stock placement and through the plug-in's own plain copy (repack=
    False) give nearly the same decode logits: the sparse FFN kernels run on the same bytes; the
    rest differs by repacked vs plain dense kernels for attention and the prompt (measured: max
    3% of the logits' spread, mean 0.4%): mean within 1%, max within 6%, against a mask with
    other neurons (what a wrong row would look like) that moves them much further."""
    path = tiny(model_dir, "q4_0")
    a = GlassLlama(str(path), density=0.4, method="griffin", logits_all=True, **KW)
    b = GlassLlama(str(path), density=0.4, method="griffin", logits_all=True, repack=False, **KW)
    prompt = a.tokenize(PROMPT.encode())
    rng = np.random.default_rng(3)
    masks = [np.sort(rng.choice(512, 200, replace=False)).astype(np.int32) for _ in range(2)]
    teacher = [int(t) for t in rng.integers(4, 300, size=16)]
    other = [np.setdiff1d(np.arange(512), m)[:200].astype(np.int32) for m in masks]

    def run(llm, ms):
        llm.reset()
        llm.eval(prompt)                 # dense (no mask yet)
        llm.install_masks(ms)
        for tok in teacher:
            llm.eval([tok])
        return np.array(llm.scores[len(prompt): len(prompt) + len(teacher)])

    ya, yb = run(a, masks), run(b, masks)
    scale = yb.std()
    diff = np.abs(ya - yb)
    assert diff.mean() <= 0.01 * scale and diff.max() <= 0.06 * scale, (diff.mean() / scale, diff.max() / scale)
    assert a.sparse_ops > 0 and b.sparse_ops > 0
    assert np.abs(run(a, other) - yb).mean() > 5 * diff.mean()


def test_unfindable_plain_bytes_is_a_one_line_error(model_dir, monkeypatch):
    """If a repacked weight's file bytes cannot be found, the load fails with a UserError (the
    CLI prints it as one line) that names the way out."""
    from glass_edge.errors import UserError

    def gone(*_):
        raise ValueError("blk.0.ffn_up.weight: not in the file")

    monkeypatch.setattr(plain_bytes, "locate", gone)
    with pytest.raises(UserError, match="repack=False"):
        GlassLlama(str(tiny(model_dir, "q4_0")), density=0.5, **KW)


def test_without_mmap_the_plugin_keeps_its_own_plain_copy(model_dir):
    """use_mmap=False: no file mapping to read plain bytes from, so the FFN weights live in the
    plug-in's own buffer (nothing to locate) and decode gives the same greedy text as stock
    placement with the same masks (the sparse kernels read the same values either way)."""
    path = tiny(model_dir, "q4_0")
    own = GlassLlama(str(path), density=0.4, method="griffin", use_mmap=False, **KW)
    placed = GlassLlama(str(path), density=0.4, method="griffin", **KW)
    assert own._plain is None and placed._plain is not None
    prompt = own.tokenize(PROMPT.encode())
    tokens = [[t for _, t in zip(range(24), llm.generate(prompt, temp=0.0))] for llm in (own, placed)]
    assert own.sparse_ops > 0 and placed.sparse_ops > 0
    assert tokens[0] == tokens[1]
