"""`glass-edge synth` and `glass-edge bench`: the synthetic models are what the presets say and load
in stock llama.cpp; the benchmark runs end to end and reports the schema with consistent values;
bad input is one line. (Speed itself is not tested: this is a functional smoke test.)"""
import json
import subprocess
import sys

import gguf
import numpy as np
import pytest

from glass_edge.decode_bytes import decode_bytes
from glass_edge.synth import tensor_specs
from glass_edge.synth_presets import PRESETS

Q = gguf.GGMLQuantizationType

# --quant -> ggml types llama.cpp's usual mix gives the FFN weights and the (tied) head
EXPECTED_TYPES = {
    "q4_k_m": ({Q.Q4_K, Q.Q6_K}, Q.Q6_K),
    "q4_0": ({Q.Q4_0}, Q.Q6_K),
    "q8_0": ({Q.Q8_0}, Q.Q8_0),
    "f16": ({Q.F16}, Q.F16),
}


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "glass_edge.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(r, needle):
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def tiny_q4km(synth_dir):
    out = synth_dir / "tiny_q4_k_m.gguf"
    r = cli("synth", "--preset", "tiny", "--quant", "q4_k_m", "-o", str(out), "-q")
    assert r.returncode == 0, r.stderr
    return out


# ----------------------------------------------------------------------------------------------
# synth
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("quant", list(EXPECTED_TYPES))
def test_synth_tensors_match_preset(quant, synth_dir, tiny_q4km):
    out = tiny_q4km if quant == "q4_k_m" else synth_dir / f"tiny_{quant}.gguf"
    if quant != "q4_k_m":
        r = cli("synth", "--preset", "tiny", "--quant", quant, "-o", str(out), "-q")
        assert r.returncode == 0, r.stderr
    preset = PRESETS["tiny"]
    reader = gguf.GGUFReader(str(out))
    got = {t.name: (tuple(int(x) for x in reversed(t.shape)), t.tensor_type) for t in reader.tensors}
    want = {name: shape for name, shape, _ in tensor_specs(preset)}
    assert {n: s for n, (s, _) in got.items()} == want
    assert "output.weight" not in got  # tied head
    assert got["blk.0.ffn_gate.weight"][0] == (preset.n_ff, preset.n_embd)
    assert got["blk.0.ffn_down.weight"][0] == (preset.n_embd, preset.n_ff)
    assert got["blk.0.attn_k.weight"][0] == (preset.n_head_kv * preset.head_dim, preset.n_embd)

    ffn_types, head_type = EXPECTED_TYPES[quant]
    for i in range(preset.n_layer):
        for part in ("gate", "up", "down"):
            assert got[f"blk.{i}.ffn_{part}.weight"][1] in ffn_types
    assert got["token_embd.weight"][1] == head_type
    assert all(t == Q.F32 for n, (_, t) in got.items() if n.endswith("norm.weight"))
    # no leftover temp files next to the output
    assert not list(synth_dir.glob("*.tmp"))


def test_synth_is_deterministic_and_random(synth_dir, tiny_q4km):
    again = synth_dir / "again.gguf"
    assert cli("synth", "--preset", "tiny", "-o", str(again), "-q").returncode == 0
    assert again.read_bytes() == tiny_q4km.read_bytes()
    # F16 weights: normal(0, 0.02); norm weights 1
    f16 = synth_dir / "tiny_f16_values.gguf"
    assert cli("synth", "--preset", "tiny", "--quant", "f16", "-o", str(f16), "-q").returncode == 0
    t = {x.name: np.asarray(x.data, dtype=np.float32) for x in gguf.GGUFReader(str(f16)).tensors}
    w = t["blk.1.ffn_up.weight"]
    assert abs(float(w.std()) - 0.02) < 0.001 and abs(float(w.mean())) < 0.001
    assert not np.array_equal(w, t["blk.1.ffn_gate.weight"])
    assert np.all(t["blk.1.ffn_norm.weight"] == 1.0)


def test_synth_loads_in_stock_llama_cpp(tiny_q4km):
    """A process that never imports glass-edge loads it, and llama.cpp sees the preset's shapes."""
    code = r"""
import json, sys
import numpy as np
import llama_cpp as L
llm = L.Llama(sys.argv[1], n_ctx=128, verbose=False)
m = llm.model
llm.eval(llm.tokenize(b"the quick brown fox"))
logits = np.ctypeslib.as_array(L.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
print(json.dumps({"n_vocab": llm.n_vocab(), "n_embd": L.llama_model_n_embd(m), "n_layer": L.llama_model_n_layer(m),
                  "n_head": L.llama_model_n_head(m), "n_head_kv": L.llama_model_n_head_kv(m),
                  "n_params": L.llama_model_n_params(m), "finite": bool(np.isfinite(logits).all()),
                  "glass": "glass_edge" in sys.modules}))
"""
    r = subprocess.run([sys.executable, "-c", code, str(tiny_q4km)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    p = PRESETS["tiny"]
    assert not got["glass"] and got["finite"]
    assert (got["n_vocab"], got["n_embd"], got["n_layer"], got["n_head"], got["n_head_kv"]) == \
        (p.n_vocab, p.n_embd, p.n_layer, p.n_head, p.n_head_kv)
    assert got["n_params"] == sum(int(np.prod(s)) for _, s, _ in tensor_specs(p))


# ----------------------------------------------------------------------------------------------
# bytes per token
# ----------------------------------------------------------------------------------------------

def _is_ffn(name):
    parts = name.split(".", 2)
    return parts[0] == "blk" and parts[-1] in ("ffn_up.weight", "ffn_gate.weight", "ffn_down.weight")


def _hand_bytes(path):
    """The decode-bytes rule written out directly: (ffn, non_ffn)."""
    ts = gguf.GGUFReader(str(path)).tensors
    untied = any(t.name == "output.weight" for t in ts)
    ffn = sum(int(t.n_bytes) for t in ts if _is_ffn(t.name))
    rest = sum(int(t.n_bytes) for t in ts if not _is_ffn(t.name) and not (untied and t.name == "token_embd.weight"))
    if untied:  # one embedding row per token
        emb = next(t for t in ts if t.name == "token_embd.weight")
        rest += int(emb.n_bytes) // int(emb.shape[1])
    return ffn, rest


def test_decode_bytes_tied_and_untied(tiny_q4km, tiny_model_factory):
    untied = tiny_model_factory("llama", "q8_0")  # synth_tiny writes a separate output.weight
    for path, tied in ((tiny_q4km, True), (untied, False)):
        b = decode_bytes(path)
        assert b.tied_head == tied
        assert (b.ffn, b.non_ffn) == _hand_bytes(path)
        assert b.ideal_speedup(1.0) == 1.0
        assert b.ideal_speedup(0.5) == pytest.approx((b.ffn + b.non_ffn) / (b.non_ffn + 0.5 * b.ffn))


# ----------------------------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------------------------

def test_bench_smoke_schema_and_values(tiny_q4km, tmp_path):
    out = tmp_path / "bench.json"
    r = cli("bench", str(tiny_q4km), "--densities", "0.5,1.0", "-p", "8", "-n", "8", "-r", "2",
            "--pp-sizes", "16", "-t", "1", "--json", str(out))
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())

    for key in ("model", "threads", "dense_tg", "dense_pp", "glass_pp", "rss_dense_mb", "rss_glass_mb", "rows",
                "dense_pp_16", "glass_pp_16", "dense_ttft_ms", "glass_ttft_ms", "ttft_overhead"):
        assert key in res, key
    assert res["model"] == str(tiny_q4km) and res["threads"] == 1
    for key in ("dense_tg", "dense_pp", "glass_pp", "dense_pp_16", "glass_pp_16", "rss_dense_mb", "rss_glass_mb",
                "dense_ttft_ms", "glass_ttft_ms"):
        assert np.isfinite(res[key]) and res[key] > 0, key
    assert res["rss_dense_mb"] > 10 and res["rss_glass_mb"] > 10

    ffn, rest = _hand_bytes(tiny_q4km)
    assert [row["density"] for row in res["rows"]] == [0.5, 1.0]
    for row in res["rows"]:
        assert set(row) >= {"density", "tg", "tg_std", "speedup", "ideal", "efficiency", "mask_ms"}
        assert row["tg"] > 0 and row["tg_std"] >= 0 and row["mask_ms"] >= 0
        assert row["ideal"] == pytest.approx((ffn + rest) / (rest + row["density"] * ffn), rel=1e-12)
        assert row["speedup"] == pytest.approx(row["tg"] / res["dense_tg"])
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["ideal"])
    assert res["rows"][1]["ideal"] == 1.0
    # the FFN layers' share of a decode token, timed by the plug-in: part of the token, not all
    for row in res["rows"]:
        token_ms = 1e3 / row["tg"]
        assert 0 < row["ffn_ms"] < token_ms and row["other_ms"] > 0, row
        assert row["ffn_ms"] + row["other_ms"] == pytest.approx(token_ms, rel=0.3)  # mean of ratios
    dense_ms, ffn_dense = 1e3 / res["dense_tg"], res["rows"][1]["ffn_ms"]
    assert res["ffn_ms_dense"] == ffn_dense
    half = res["rows"][0]
    assert half["ffn_efficiency"] == pytest.approx(0.5 * ffn_dense / half["ffn_ms"])
    assert half["ideal_time"] == pytest.approx(dense_ms / (dense_ms - 0.5 * min(ffn_dense, dense_ms)))
    assert half["efficiency_time"] == pytest.approx(half["speedup"] / half["ideal_time"])
    # the sparse decode really ran sparse: gate, up and down of every layer, every token
    assert res["rows"][0]["sparse_ops_per_token"] >= 3 * PRESETS["tiny"].n_layer
    assert res["rows"][1]["sparse_ops_per_token"] == 0  # a full mask runs ggml's dense kernels
    # the stock model was stock: nothing on the GLASS device; and glass-edge's stock placement
    # left every weight where stock puts it (the same buffers, repacked ones included)
    assert not any(k.startswith("GLASS") for k in res["buffers_mib"]["stock"])
    assert res["buffers_mib"]["glass"] == res["buffers_mib"]["stock"]
    assert "CPU_REPACK" in res["buffers_mib"]["glass"]

    assert "| model" in r.stdout and "tg8" in r.stdout and "pp16" in r.stdout and "peak RSS" in r.stdout
    assert "FFN ms/token" in r.stdout


def test_bench_stock_engine_is_stock_llama_cpp(tiny_q4km, tmp_path):
    """bench's stock engine, loaded in a process where glass-edge is registered, computes exactly
    the logits of llama_cpp.Llama in a process that never imported glass-edge."""
    import llama_cpp

    from glass_edge.bench import load_stock

    tokens = [1, 300, 301, 302, 303, 304, 305]
    code = r"""
import sys, numpy as np, llama_cpp as L
llm = L.Llama(sys.argv[1], n_ctx=128, n_threads=1, n_threads_batch=1, verbose=False)
llm.eval([int(t) for t in sys.argv[2].split(",")])
np.save(sys.argv[3], np.ctypeslib.as_array(L.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)))
"""
    ref_path = tmp_path / "ref.npy"
    r = subprocess.run([sys.executable, "-c", code, str(tiny_q4km), ",".join(map(str, tokens)), str(ref_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    llm, buffers = load_stock(str(tiny_q4km), n_ctx=128, n_threads=1, n_threads_batch=1)
    assert "CPU_REPACK" in buffers and not any(k.startswith("GLASS") for k in buffers)
    llm.eval(tokens)
    got = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()
    assert np.array_equal(got, np.load(ref_path))


@pytest.mark.parametrize("args, needle", [
    (["bench", "/nonexistent/model.gguf"], "not found"),
    (["bench", "MODEL", "--densities", "0.5,1.5"], "density"),
    (["bench", "MODEL", "--densities", "0,0.5"], "density"),
    (["bench", "MODEL", "--densities", "half"], "density"),
    (["bench", "MODEL", "-r", "0"], "positive"),
    (["bench", "MODEL", "--pp-sizes", "128,x"], "whole number"),
    (["bench", "MODEL", "--method", "magic"], "unknown method"),
    (["bench", "MODEL", "--json", "/nonexistent/dir/out.json"], "does not exist"),
    (["bench", "MODEL", "--prior", "/nonexistent/prior.gguf"], "not found"),
    (["synth", "--preset", "gpt-9", "-o", "x.gguf"], "invalid choice"),
    (["synth", "--preset", "tiny", "--quant", "q3_xs", "-o", "x.gguf"], "invalid choice"),
    (["synth", "--preset", "tiny"], "required"),
    (["synth", "--preset", "tiny", "-o", "/nonexistent/dir/x.gguf"], "does not exist"),
])
def test_bad_input_one_line_error(args, needle, tiny_q4km):
    one_line_error(cli(*[str(tiny_q4km) if a == "MODEL" else a for a in args]), needle)


def test_bench_corrupt_model(tmp_path, tiny_q4km):
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(tiny_q4km.read_bytes()[: tiny_q4km.stat().st_size // 2])
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model" * 100)
    for path in (trunc, junk):
        one_line_error(cli("bench", str(path), "-r", "1", "-n", "4", "--no-rss"), "error")


def test_time_ideal_and_its_table():
    """The time-based ideal from a density-1.0 row, by hand; a row without FFN time prints dashes."""
    from glass_edge.bench import _time_ideal, markdown_report

    rows = [{"density": 0.25, "speedup": 1.5, "ffn_ms": 12.0}, {"density": 0.5, "speedup": 1.2, "ffn_ms": 0.0},
            {"density": 1.0, "speedup": 1.0, "ffn_ms": 40.0}]
    res = {"dense_tg": 1000 / 70.0}  # 70 ms per token, 40 of them in the FFN
    _time_ideal(res, rows)
    assert res["ffn_ms_dense"] == 40.0
    assert rows[0]["ffn_efficiency"] == pytest.approx(0.25 * 40 / 12)
    assert rows[0]["ideal_time"] == pytest.approx(70 / (30 + 10))
    assert rows[0]["efficiency_time"] == pytest.approx(1.5 / (70 / 40))
    assert rows[1]["ffn_efficiency"] is None and rows[1]["ideal_time"] is None
    for r, tg in zip(rows, (21.0, 17.0, 14.3)):
        r.update(tg=tg, tg_std=0.1, ideal=1.0, efficiency=1.0, mask_ms=1.0, glass_pp=10.0, glass_pp_std=0.1,
                 ttft_ms=5.0, other_ms=30.0)
    res.update(model_desc="m", model_size_mib=1.0, n_params=1e9, method="griffin", threads=2, n_prompt=8, n_gen=8,
               dense_pp=10.0, dense_pp_std=0.1, dense_ttft_ms=5.0, dense_tg_std=0.1, glass_ttft_ms=5.0,
               ttft_overhead=0.0, rows=rows, bytes_per_token={"total": 2**20, "ffn": 2**19, "ffn_fraction": 0.5})
    table = markdown_report(res)
    assert "|    0.25 |" in table.split("FFN ms/token")[1] and "—" in table and "1.75" in table
