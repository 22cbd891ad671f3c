"""`glass-edge eval`: its pieces against hand-computed / numpy references, and the whole command on a
tiny synthetic model (dense vs dense is exact, random is worse than griffin, the JSON is as documented)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from glass_edge import GlassLlama
from glass_edge.decoding import greedy_continue, last_logits, lookup_draft
from glass_edge.errors import UserError
from glass_edge.evaluate import Config, ConfigScores, Evaluator, _pyplot, configs_for
from glass_edge.logit_metrics import DenseReference, compare
from glass_edge.prompts import load_prompts
from glass_edge.rouge import lcs_length, rouge_l

PROMPTS = ["the quick brown fox", "what is the way to the dog", "how many people are there",
           "she said that they would go", "he will look at the number", "we can make some time"]
N_TOKENS = 24
RESULT_KEYS = {"method", "density", "lambda", "kl_mean", "kl_p90", "top1", "ppl", "ppl_dense", "rougeL"}


# ----------------------------------------------------------------------------------------------
# ROUGE-L
# ----------------------------------------------------------------------------------------------

def _lcs_dp(a, b):
    table = np.zeros((len(a) + 1, len(b) + 1), dtype=int)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1, j + 1] = table[i, j] + 1 if x == y else max(table[i, j + 1], table[i + 1, j])
    return int(table[-1, -1])


def test_rouge_l_hand_computed():
    assert lcs_length("ABCBDAB", "BDCABA") == 4
    # LCS "the cat on the mat" = 5; P = 5/6, R = 5/5, F = 2PR/(P+R) = 10/11
    assert rouge_l("the cat sat on the mat".split(), "the cat on the mat".split()) == pytest.approx(10 / 11)
    assert rouge_l([1, 2, 3], [1, 2, 3]) == 1.0
    assert rouge_l([1, 2, 3], [4, 5]) == 0.0
    assert rouge_l([3, 2, 1], [1, 2, 3]) == pytest.approx(1 / 3)
    assert rouge_l([], []) == 1.0 and rouge_l([], [1]) == 0.0


def test_lcs_matches_dynamic_programme():
    rng = np.random.default_rng(0)
    for _ in range(300):
        alphabet = int(rng.choice([2, 5, 40]))
        a = rng.integers(0, alphabet, rng.integers(0, 30)).tolist()
        b = rng.integers(0, alphabet, rng.integers(0, 30)).tolist()
        assert lcs_length(a, b) == _lcs_dp(a, b), (a, b)


# ----------------------------------------------------------------------------------------------
# prompt files
# ----------------------------------------------------------------------------------------------

def test_prompts_jsonl_and_plain(tmp_path):
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "one"}\n\n{"prompt": "two\\nlines", "kind": "x"}\n', encoding="utf-8")
    assert load_prompts(jl) == ["one", "two\nlines"]
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  \nsecond prompt\r\n", encoding="utf-8")
    assert load_prompts(txt) == ["first prompt", "second prompt"]


@pytest.mark.parametrize("text, needle", [
    ('{"prompt": "ok"}\n{"prompt": broken\n', "line 2: not valid JSON"),
    ('{"prompt": "ok"}\n\n{"text": "no prompt field"}\n', "line 3: expected an object"),
    ("\n \n", "no prompts"),
])
def test_prompts_bad_input(tmp_path, text, needle):
    f = tmp_path / "bad.jsonl"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=needle):
        load_prompts(f)


def test_prompts_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_prompts(tmp_path / "nope.jsonl")


# ----------------------------------------------------------------------------------------------
# per-token metrics and drafts
# ----------------------------------------------------------------------------------------------

def test_compare_matches_float64_reference():
    rng = np.random.default_rng(1)
    dense = (rng.standard_normal((40, 1000)) * 3).astype(np.float32)
    sparse = (dense + rng.standard_normal(dense.shape) * 0.7 + 2.0).astype(np.float32)  # shift: KL ignores it
    targets = rng.integers(0, 1000, 40)
    ref = DenseReference(dense, targets)
    got = compare(ref, sparse)

    def log_softmax(x):
        x = x.astype(np.float64)
        z = x - x.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    lp, lq = log_softmax(dense), log_softmax(sparse)
    np.testing.assert_allclose(got.kl, (np.exp(lp) * (lp - lq)).sum(axis=1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.target_logprob, lq[np.arange(40), targets], atol=1e-4)
    np.testing.assert_array_equal(got.top1, sparse.argmax(1) == dense.argmax(1))
    same = compare(ref, dense.copy())
    assert same.kl.max() == 0.0 and same.top1.all()


def test_lookup_draft():
    # own history: the 3-gram [1, 2, 3] matched 3 tokens back -> trusted for 3 - 2 = 1 token
    assert lookup_draft([1, 2, 3, 4, 5, 1, 2, 3], [], 8) == [4]
    # a loop of period 4 matched 7 tokens back -> 5 tokens, repeating the period past its end
    assert lookup_draft([5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7], [], 8) == [8, 5, 6, 7, 8]
    assert lookup_draft([5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7], [], 3) == [8, 5, 6]
    # a source: the occurrence nearest `position` is copied
    src = [9, 7, 8, 1, 2, 3, 9, 7, 8, 5, 6]
    assert lookup_draft([4, 9, 7, 8], [src], 8, position=9) == [5]
    assert lookup_draft([4, 9, 7, 8], [src], 8, position=2) == [1]
    # no earlier 3-gram: no guess
    assert lookup_draft([1, 2, 3, 4], [[5, 6, 7, 8]], 8) == []
    assert lookup_draft([1, 2, 3, 1, 2, 3], [], 0) == []


# ----------------------------------------------------------------------------------------------
# on a tiny model
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_path(tiny_model_factory):
    return str(tiny_model_factory("llama", "f32"))


@pytest.fixture(scope="module")
def evaluated(tiny_path):
    """Per prompt: its reference, and the scores of dense, griffin and random at two densities."""
    # one thread: llama.cpp's spinning thread barriers crawl when other processes load the cores
    llm = GlassLlama(tiny_path, n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False,
                     density=1.0, method="dense")
    ev = Evaluator(llm, N_TOKENS)
    configs = configs_for(["dense", "griffin", "random"], [0.25, 0.75])
    scores = {c: ConfigScores() for c in configs}
    refs = []
    for i, p in enumerate(PROMPTS):
        pr = ev.reference(llm.tokenize(p.encode(), add_bos=True, special=True))
        refs.append(pr)
        for c in configs:
            scores[c].add(ev.score(pr, c, seed=i))
    return llm, ev, refs, scores


def test_dense_against_dense_is_exact(evaluated):
    _llm, _ev, refs, scores = evaluated
    s = scores[Config("dense", 1.0)]
    assert max(k.max() for k in s.kl) <= 1e-6
    assert s.top1 == [1.0] * len(PROMPTS)
    assert s.rouge == [1.0] * len(PROMPTS)
    np.testing.assert_allclose(s.ppl, [r.ppl_dense for r in refs], rtol=1e-9)
    assert all(len(k) == N_TOKENS - 1 for k in s.kl)


def test_random_worse_than_griffin_and_kl_falls_with_density(evaluated):
    _llm, _ev, _refs, scores = evaluated

    def kl(method, d):
        return float(np.concatenate(scores[Config(method, d)].kl).mean())
    for d in (0.25, 0.75):
        assert kl("random", d) > 1.5 * kl("griffin", d) > 0
        assert np.mean(scores[Config("random", d)].top1) < np.mean(scores[Config("griffin", d)].top1)
    assert kl("griffin", 0.25) > kl("griffin", 0.75)
    assert kl("random", 0.25) > kl("random", 0.75)


def test_reference_is_the_dense_greedy_continuation(evaluated):
    """The reference equals a plain one-token-per-eval greedy loop (no drafts, no batches)."""
    llm, ev, refs, _scores = evaluated
    for pr in refs:
        ev._prefill(pr.tokens, "dense", 1.0)
        plain, n_evals = greedy_continue(llm, [int(np.argmax(last_logits(llm)))], N_TOKENS, max_draft=0)
        assert n_evals == N_TOKENS - 1
        assert plain == pr.reference


def test_free_run_is_the_sparse_greedy_continuation(evaluated):
    """The free run (teacher-forced prefix, then drafts checked in batches) equals a plain loop."""
    llm, ev, refs, _scores = evaluated
    for i, pr in enumerate(refs[:3]):
        free = ev.score(pr, Config("griffin", 0.25), seed=i).free_run
        ev._prefill(pr.tokens, "griffin", 0.25)
        plain, _ = greedy_continue(llm, [int(np.argmax(last_logits(llm)))], N_TOKENS, max_draft=0)
        assert free == plain


def test_random_masks_are_seeded_per_prompt(evaluated):
    llm, ev, refs, _scores = evaluated
    ev._prefill(refs[0].tokens, "random", 0.5, seed=3)
    first = [m.copy() for m in llm.last_masks]
    ev._prefill(refs[1].tokens, "random", 0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(first, llm.last_masks))
    ev._prefill(refs[0].tokens, "random", 0.5, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(first, llm.last_masks))


def test_plot_without_matplotlib_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UserError, match="matplotlib"):
        _pyplot()


# ----------------------------------------------------------------------------------------------
# the command
# ----------------------------------------------------------------------------------------------

def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "glass_edge.cli", "eval", *args], capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(r, needle):
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode != 0 and len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_cli_end_to_end_json_table_plot(tiny_path, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:3]) + "\n", encoding="utf-8")
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    r = cli(tiny_path, "--prompts", str(prompts), "--max-tokens", "12", "--densities", "0.25,0.5",
            "--methods", "dense,griffin,random", "--json", str(out_json), "--plot", str(out_png),
            "-c", "128", "-t", "1", "-j", "2")
    assert r.returncode == 0, r.stderr
    report = json.loads(out_json.read_text())
    assert {"model", "max_tokens", "n_prompts", "results"} <= report.keys()
    assert report["max_tokens"] == 12 and report["n_prompts"] == 3
    rows = report["results"]
    assert [(x["method"], x["density"]) for x in rows] == [
        ("dense", 1.0), ("griffin", 0.25), ("griffin", 0.5), ("random", 0.25), ("random", 0.5)]
    for row in rows:
        assert RESULT_KEYS <= row.keys()
        assert row["lambda"] is None
        assert all(isinstance(row[k], float) for k in RESULT_KEYS - {"method", "density", "lambda"})
    assert rows[0]["kl_mean"] == 0.0 and rows[0]["top1"] == 1.0 and rows[0]["rougeL"] == 1.0
    assert rows[0]["ppl"] == pytest.approx(rows[0]["ppl_dense"])
    assert all(x["ppl_pooled"] <= x["ppl"] * (1 + 1e-9) for x in rows)  # geometric <= arithmetic mean
    # the Markdown table: a header, a rule and one line per result
    table = [line for line in r.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows) and "KL mean" in table[0] and table[2].startswith("| dense | 1 |")
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_lambda_recorded_for_glass_methods(tiny_path, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": PROMPTS[0]}) + "\n", encoding="utf-8")
    out_json = tmp_path / "eval.json"
    r = cli(tiny_path, "--prompts", str(prompts), "--max-tokens", "6", "--densities", "0.5",
            "--methods", "global,a-glass", "--lambda", "0.25", "--json", str(out_json), "-c", "64", "-q",
            "-t", "1", "-j", "1")
    assert r.returncode == 0, r.stderr
    rows = json.loads(out_json.read_text())["results"]
    assert [(x["method"], x["lambda"]) for x in rows] == [("global", None), ("a-glass", 0.25)]


def test_cli_bad_inputs(tiny_path, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{oops\n', encoding="utf-8")
    one_line_error(cli(tiny_path, "--prompts", str(bad)), "line 2")
    one_line_error(cli(tiny_path, "--prompts", str(tmp_path / "missing.txt")), "not found")
    long = tmp_path / "long.txt"
    long.write_text("the quick brown fox\n", encoding="utf-8")
    one_line_error(cli(tiny_path, "--prompts", str(long), "--max-tokens", "100", "-c", "64"),
                   "exceed the context size")
    one_line_error(cli(tiny_path, "--prompts", str(long), "--densities", "0"), "density")
    one_line_error(cli(tiny_path, "--prompts", str(long), "--methods", "dense,magic"), "unknown method")
