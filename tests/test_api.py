"""The Python API on gemma-3-270m: llama-cpp-python's calls, streaming, chat, per-call overrides,
mask introspection and timings. One GlassLlama serves the module (greedy, few tokens)."""
import json
import subprocess
import sys
import types

import numpy as np
import pytest

from glass_edge import GlassLlama
from glass_edge.chat_template import FALLBACK_FORMAT, render_chat_prompt, use_fallback_chat_format
from glass_edge.default_model import default_model_path

PROMPT = "The three most useful things to know about the ocean are"
N_LAYER, N_FF = 18, 2048


@pytest.fixture(scope="module")
def gemma_path():
    return str(default_model_path())


@pytest.fixture(scope="module")
def llm(gemma_path):
    # griffin explicitly: these tests are about per-call overrides and their restoring
    return GlassLlama(gemma_path, n_ctx=512, n_threads=2, n_threads_batch=2, verbose=False, seed=1, density=0.5,
                      method="griffin")


def test_default_method_is_glass():
    """Users get GLASS (a-glass, the prompt's ranking aggregated with the global prior) unless they
    ask for another method: the class default and the run/chat/serve command-line default."""
    import inspect

    from glass_edge.cli import build_parser

    assert inspect.signature(GlassLlama.__init__).parameters["method"].default == "a-glass"
    for cmd in (["run"], ["chat"], ["serve"]):
        assert build_parser().parse_args(cmd).method == "a-glass"
    assert build_parser().parse_args(["bench", "m.gguf"]).method == "griffin"  # speed: method-independent


def kept(density):
    return round(density * N_FF) / N_FF


# ----------------------------------------------------------------------------------------------
# completions
# ----------------------------------------------------------------------------------------------

def test_density_one_matches_stock_llama_cpp(llm, gemma_path):
    code = (f"import json, llama_cpp\n"
            f"llm = llama_cpp.Llama({gemma_path!r}, n_ctx=512, n_threads=2, n_threads_batch=2, verbose=False, seed=1)\n"
            f"print(json.dumps(llm({PROMPT!r}, max_tokens=16, temperature=0)['choices'][0]['text']))\n")
    stock = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True, timeout=600).stdout)
    out = llm(PROMPT, max_tokens=16, temperature=0, density=1.0)
    assert out["choices"][0]["text"] == stock and len(stock) > 10
    assert llm.mask_densities() == [1.0] * N_LAYER  # the call ran at density 1 ...
    assert llm.density == 0.5                       # ... and the instance's density came back


def test_completion_shape_usage_and_timings(llm):
    out = llm.create_completion(PROMPT, max_tokens=6, temperature=0)
    n_prompt = len(llm.tokenize(PROMPT.encode()))
    assert out["object"] == "text_completion" and out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": n_prompt, "completion_tokens": 6, "total_tokens": n_prompt + 6}
    t = llm.timings
    assert t.prompt_tokens == n_prompt and t.eval_tokens == 5  # the 6th token is sampled, never evaluated
    assert t.prompt_tps > 0 and t.eval_tps > 0 and t.mask_ms > 0
    assert t.prompt_tps == pytest.approx(1e3 * t.prompt_tokens / t.prompt_ms)
    assert llm.mask_densities() == pytest.approx([kept(0.5)] * N_LAYER)
    assert llm.sparse_ops > 0


def test_streaming_concatenation_equals_non_streaming(llm):
    whole = llm(PROMPT, max_tokens=10, temperature=0)["choices"][0]["text"]
    chunks = list(llm(PROMPT, max_tokens=10, temperature=0, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


# ----------------------------------------------------------------------------------------------
# per-call overrides
# ----------------------------------------------------------------------------------------------

def test_per_call_density_and_method_apply_and_restore(llm):
    llm(PROMPT, max_tokens=2, temperature=0, density=0.25)
    assert llm.mask_densities() == pytest.approx([kept(0.25)] * N_LAYER)
    assert (llm.density, llm.method) == (0.5, "griffin")
    llm.create_completion(PROMPT, max_tokens=2, temperature=0, method="dense")
    assert llm.last_masks == [None] * N_LAYER and llm.method == "griffin"
    llm.create_completion(PROMPT, max_tokens=2, temperature=0)  # no override: the instance's own
    assert llm.mask_densities() == pytest.approx([kept(0.5)] * N_LAYER)


def test_per_call_glass_method_uses_the_prior(llm):
    from glass_edge.prior import Prior
    rng = np.random.default_rng(0)
    prior = Prior(act_score=[rng.random(N_FF) for _ in range(N_LAYER)],
                  imp_score=[rng.random(N_FF) for _ in range(N_LAYER)])
    llm.prior = prior
    try:
        llm(PROMPT, max_tokens=2, temperature=0, method="global", density=0.25)
        top = [np.sort(np.argsort(-a, kind="stable")[:round(0.25 * N_FF)]) for a in prior.act_score]
        assert all(np.array_equal(m, t) for m, t in zip(llm.last_masks, top))  # the prior alone
        llm(PROMPT, max_tokens=2, temperature=0, method="a-glass")
        assert llm.mask_densities() == pytest.approx([kept(0.5)] * N_LAYER)
        assert llm.method == "griffin"
    finally:
        llm.prior = None


def test_streaming_override_holds_while_consumed_and_restores_on_close(llm):
    stream = llm.create_completion(PROMPT, max_tokens=8, temperature=0, stream=True, density=0.3)
    next(stream)
    assert llm.density == 0.3 and llm.mask_densities() == pytest.approx([kept(0.3)] * N_LAYER)
    stream.close()  # a consumer that stops early
    assert llm.density == 0.5
    chat = llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0,
                                      stream=True, method="random")
    list(chat)
    assert llm.method == "griffin"


@pytest.mark.parametrize("kwargs", [dict(density=0), dict(density=1.5), dict(density="abc"),
                                    dict(density=True), dict(density=float("nan")), dict(method="nope"),
                                    dict(method=3)])
def test_bad_overrides_raise_value_error_and_change_nothing(llm, kwargs):
    for call in (llm, llm.create_completion):
        with pytest.raises(ValueError):
            call(PROMPT, max_tokens=2, **kwargs)
    with pytest.raises(ValueError):
        llm.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=2, stream=True, **kwargs)
    assert (llm.density, llm.method) == (0.5, "griffin")


# ----------------------------------------------------------------------------------------------
# mask introspection
# ----------------------------------------------------------------------------------------------

def test_mask_overlap(llm):
    llm.clear_masks()
    llm(PROMPT, max_tokens=2, temperature=0)
    assert llm.mask_overlap() is None  # nothing installed before
    first = [m.copy() for m in llm.last_masks]
    llm(PROMPT, max_tokens=2, temperature=0)
    assert llm.mask_overlap() == [1.0] * N_LAYER  # same prompt, same mask
    llm("def fibonacci(n):\n    return", max_tokens=2, temperature=0)
    overlap = llm.mask_overlap()
    assert len(overlap) == N_LAYER and all(0.0 <= x <= 1.0 for x in overlap) and min(overlap) < 1.0
    # the documented definition: |last ∩ previous| / |last|
    expect = [np.intersect1d(a, b).size / a.size for a, b in zip(llm.last_masks, first)]
    assert overlap == pytest.approx(expect)


# ----------------------------------------------------------------------------------------------
# chat
# ----------------------------------------------------------------------------------------------

MESSAGES = [{"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "What colour is the sky?"}]


def test_gemma_without_template_gets_gemma_turns(llm):
    assert "tokenizer.chat_template" not in llm.metadata and llm.chat_format == FALLBACK_FORMAT
    assert render_chat_prompt(llm, MESSAGES + [{"role": "assistant", "content": "Blue"},
                                               {"role": "user", "content": [{"type": "text", "text": "Why?"}]}]) == (
        "<bos><start_of_turn>user\nAnswer in one word.\n\nWhat colour is the sky?<end_of_turn>\n"
        "<start_of_turn>model\nBlue<end_of_turn>\n"
        "<start_of_turn>user\nWhy?<end_of_turn>\n<start_of_turn>model\n")


def test_fallback_leaves_explicit_formats_and_other_models_alone():
    def fake(arch, chat_format="llama-2", metadata_extra=None):
        return types.SimpleNamespace(metadata={"general.architecture": arch, **(metadata_extra or {})},
                                     chat_format=chat_format, _chat_handlers={})
    for llm, chosen in [(fake("gemma3"), "chatml"), (fake("llama"), None),
                        (fake("gemma3", metadata_extra={"tokenizer.chat_template": "x"}), None)]:
        use_fallback_chat_format(llm, chosen, None)
        assert llm.chat_format == "llama-2" and llm._chat_handlers == {}


def test_chat_streaming_equals_non_streaming(llm):
    whole = llm.create_chat_completion(MESSAGES, max_tokens=8, temperature=0)
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"]["role"] == "assistant"
    chunks = list(llm.create_chat_completion(MESSAGES, max_tokens=8, temperature=0, stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"] and text
    n_prompt = len(llm.tokenize(render_chat_prompt(llm, MESSAGES).encode(), add_bos=False, special=True))
    assert whole["usage"]["prompt_tokens"] == n_prompt


def test_multi_turn_reuses_the_cache_and_adds_only_the_new_turn_statistics(llm):
    """The documented chat rule: statistics are summed over every prefilled token of the
    conversation; the model's own replies sit in the KV cache but were decoded, never prefilled."""
    messages = list(MESSAGES)
    first = llm.create_chat_completion(messages, max_tokens=6, temperature=0)
    rows_first = list(llm._stats_rows)
    n_first = first["usage"]["prompt_tokens"]
    assert rows_first[0] == n_first - 1  # every prompt row but BOS
    messages += [first["choices"][0]["message"], {"role": "user", "content": "And the grass?"}]
    second = llm.create_chat_completion(messages, max_tokens=6, temperature=0)
    new = llm.timings.prompt_tokens
    assert new < second["usage"]["prompt_tokens"] - n_first  # the reply tokens were not prefilled again
    assert [r2 - r1 for r1, r2 in zip(rows_first, llm._stats_rows)][:-1] == [new] * (N_LAYER - 1)
    assert llm.mask_densities() == pytest.approx([kept(0.5)] * N_LAYER)


DROP_IN_SCRIPT = '''
from llama_cpp import Llama

llm = Llama(model_path=MODEL, n_ctx=512, n_threads=2, verbose=False)
messages = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Name a planet."},
]
response = llm.create_chat_completion(messages=messages, max_tokens=6, temperature=0)
reply = response["choices"][0]["message"]["content"]
messages.append({"role": "assistant", "content": reply})
messages.append({"role": "user", "content": "Another one?"})
streamed = ""
for chunk in llm.create_chat_completion(messages=messages, max_tokens=6, temperature=0, stream=True):
    streamed += chunk["choices"][0]["delta"].get("content", "")
print(llm(prompt="Q: What is 2+2? A:", max_tokens=4, temperature=0)["choices"][0]["text"])
'''


def test_drop_in_for_a_llama_cpp_python_chat_script(gemma_path):
    """A llama-cpp-python chat script runs with only the class name changed."""
    script = DROP_IN_SCRIPT.replace("from llama_cpp import Llama", "from glass_edge import GlassLlama")
    script = script.replace("Llama(model_path", "GlassLlama(model_path")
    assert script.count("GlassLlama") == 2
    env = {"MODEL": gemma_path}
    exec(compile(script, "chat_script.py", "exec"), env)
    llm = env["llm"]
    assert isinstance(llm, GlassLlama) and llm.chat_format == FALLBACK_FORMAT
    assert env["reply"].strip() and env["streamed"].strip()
    assert llm.mask_densities() == pytest.approx([kept(0.5)] * N_LAYER)  # sparse by default
    assert llm.timings.eval_tps > 0
