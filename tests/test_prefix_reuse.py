"""Prefill statistics when llama.cpp reuses a prompt prefix from the KV cache (GlassLlama.prefill).

The rule (docs/prefill-statistics.md): statistics are sums over prompt rows, so the kept sums of
the cached prefix plus the sums of the newly evaluated suffix equal the sums of prefilling the
whole prompt at once -- in every layer but the last, which during prefill sees only the output
row of each evaluation, so there the reused sums hold one extra row (the prefix's final token).
Tokens generated during decode (between a prefix and its suffix) are never counted. A reused
prefix shorter than what the kept sums cover is prefilled again from position 0.
"""
import numpy as np
import pytest

from glass_edge import GlassLlama
from glass_edge.synth_tiny import write_tiny_model

PREFIX = "the quick brown fox jumps over the lazy dog"
SUFFIX = " and the cat was not there when he said so"
OTHER = " but a people will write to them"
N_LAYER = 3
RTOL = 1e-4  # float32 sums; the suffix batch meets the prefix through the KV cache


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix-models")
    return {arch: write_tiny_model(root / f"{arch}.gguf", arch=arch, n_layer=N_LAYER) for arch in ("llama", "gemma3")}


def glass(path) -> GlassLlama:
    return GlassLlama(str(path), density=0.5, method="griffin", n_ctx=512, n_batch=512, n_threads=2,
                      n_threads_batch=2, verbose=False)


def stats(llm):
    return ([a.copy() for a in llm._stats_act], [a.copy() for a in llm._stats_imp], list(llm._stats_rows))


def fresh_stats(llm, tokens):
    llm.reset()
    llm.prefill(tokens)
    return stats(llm)


def assert_same(got, want, layers):
    for il in layers:
        assert got[2][il] == want[2][il], (il, got[2][il], want[2][il])
        np.testing.assert_allclose(got[0][il], want[0][il], rtol=RTOL, atol=1e-6)
        np.testing.assert_allclose(got[1][il], want[1][il], rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_prefix_plus_suffix_equals_whole_prompt(model_paths, arch):
    llm = glass(model_paths[arch])
    prefix = llm.tokenize(PREFIX.encode())
    suffix = llm.tokenize(SUFFIX.encode(), add_bos=False)
    whole = fresh_stats(llm, prefix + suffix)
    prefix_only = fresh_stats(llm, prefix)
    llm.prefill(suffix)  # the prefix stays in the KV cache: only the suffix is evaluated
    assert llm.n_tokens == len(prefix) + len(suffix)
    reused = stats(llm)
    last = N_LAYER - 1
    assert_same(reused, whole, range(last))
    assert whole[2][0] == len(prefix) + len(suffix) - 1           # every row but BOS
    # the last layer: the whole prompt's output row plus the prefix's
    assert (whole[2][last], reused[2][last]) == (1, 2)
    for kind in (0, 1):  # activation, impact
        np.testing.assert_allclose(reused[kind][last], whole[kind][last] + prefix_only[kind][last],
                                   rtol=RTOL, atol=1e-6)
    # equal statistics give equal masks in those layers
    reused_masks = list(llm.last_masks)
    fresh_stats(llm, prefix + suffix)
    for il in range(last):
        np.testing.assert_array_equal(reused_masks[il], llm.last_masks[il])


def test_generate_reuses_prefix_and_skips_generated_tokens(model_paths):
    """Through llama-cpp-python's own prefix matching in generate(): a second prompt that extends
    the first (prompt + the generated tokens + new text) evaluates only what follows the cached
    tokens; its statistics are the first prompt's plus the newly evaluated rows, and the
    generated tokens decoded in between are not counted."""
    llm = glass(model_paths["llama"])
    prefix = llm.tokenize(PREFIX.encode())
    suffix = llm.tokenize(SUFFIX.encode(), add_bos=False)
    gen = llm.generate(prefix, temp=0.0)
    produced = [next(gen) for _ in range(4)]  # 3 of them were evaluated (decoded sparse)
    gen.close()
    assert llm.n_tokens == len(prefix) + 3
    first = stats(llm)
    gen = llm.generate(prefix + produced + suffix, temp=0.0)
    next(gen)
    gen.close()
    second = stats(llm)
    new_rows = 1 + len(suffix)  # the 4th produced token (never evaluated before) and the suffix
    assert second[2][0] == first[2][0] + new_rows == len(prefix) - 1 + new_rows
    assert second[2][N_LAYER - 1] == 2
    # the same sums as prefilling prefix, then exactly the newly evaluated tokens
    llm2 = glass(model_paths["llama"])
    llm2.reset()
    llm2.prefill(prefix)
    for tok in produced[:3]:                  # decoded one by one as generate() did, not counted
        llm2.eval([tok])
    llm2.prefill(produced[3:] + suffix)
    assert_same(second, stats(llm2), range(N_LAYER))


def test_shorter_reused_prefix_prefills_again(model_paths):
    """A prompt that shares less than the counted tokens (prefix + SUFFIX, then prefix + OTHER)
    cannot subtract the SUFFIX rows: the whole prompt is prefilled again, with fresh sums."""
    llm = glass(model_paths["llama"])
    prefix = llm.tokenize(PREFIX.encode())
    suffix = llm.tokenize(SUFFIX.encode(), add_bos=False)
    other = llm.tokenize(OTHER.encode(), add_bos=False)
    want = fresh_stats(llm, prefix + other)
    fresh_stats(llm, prefix + suffix)
    llm.n_tokens = len(prefix)  # as generate() does when only `prefix` matches
    llm.prefill(other)
    assert llm.n_tokens == len(prefix) + len(other)
    assert_same(stats(llm), want, range(N_LAYER))
