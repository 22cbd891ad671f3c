"""Global priors: glass.* GGUF metadata (round trip, validation), calibration (NPS, corpus), the
first-use cache, and the CLI commands calibrate / info / run --prior."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from glass_edge import gguf_meta
from glass_edge.gguf_file import ARRAY, I32, STRING, U32, pack_kv, read_header
from glass_edge.prior import Prior, PriorError, load_npz, save_npz

N_LAYER, N_FF = 2, 512


def random_prior(n_ff=(N_FF,) * N_LAYER, seed=0, source="nps") -> Prior:
    rng = np.random.default_rng(seed)
    return Prior(act_score=[rng.random(n) for n in n_ff], imp_score=[rng.random(n) for n in n_ff],
                 source=source, n_tokens=123, settings={"samples": 2, "tokens": 8})


def assert_same_prior(a: Prior, b: Prior):
    assert (a.source, a.n_tokens, a.settings) == (b.source, b.n_tokens, b.settings)
    for x, y in zip(a.act_score + a.imp_score, b.act_score + b.imp_score):
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))
    for x, y in zip(a.act_rank + a.imp_rank, b.act_rank + b.imp_rank):
        np.testing.assert_array_equal(x, y)


def cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "glass_edge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    """A private glass-edge cache folder, for this process and its subprocesses."""
    import glass_edge.prior as prior_mod
    cache = tmp_path / "cache"
    monkeypatch.setattr(prior_mod, "PRIOR_CACHE_DIR", cache / "priors")
    env = dict(os.environ, GLASS_EDGE_CACHE=str(cache))
    return cache, env


# ----------------------------------------------------------------------------------------------
# the Prior object
# ----------------------------------------------------------------------------------------------

def test_prior_ranks_are_descending_scores_ties_to_lower_index():
    p = Prior(act_score=[[0.1, 0.5, 0.5, 0.0]], imp_score=[[3.0, 1.0, 2.0, 0.0]])
    np.testing.assert_array_equal(p.act_rank[0], [2, 0, 1, 3])
    np.testing.assert_array_equal(p.imp_rank[0], [0, 2, 1, 3])


def test_prior_check_fits():
    p = random_prior()
    p.check_fits([N_FF, N_FF])
    with pytest.raises(PriorError, match="layers"):
        p.check_fits([N_FF])
    with pytest.raises(PriorError, match="layer 1 has n_ff 512"):
        p.check_fits([N_FF, 256])


def test_npz_round_trip(tmp_path):
    p = random_prior()
    save_npz(p, tmp_path / "p.npz")
    assert_same_prior(p, load_npz(tmp_path / "p.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(PriorError, match="corrupt prior file"):
        load_npz(tmp_path / "bad.npz")


# ----------------------------------------------------------------------------------------------
# glass.* metadata in a GGUF copy
# ----------------------------------------------------------------------------------------------

def test_metadata_round_trip_keeps_model_bytes(tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama", "q8_0")
    before = src.read_bytes()
    p = random_prior()
    out = tmp_path / "cal.gguf"
    gguf_meta.write_with_prior(src, out, p)
    assert src.read_bytes() == before  # the input is never touched
    assert_same_prior(p, gguf_meta.read_prior(out))
    h_src, h_out = read_header(src), read_header(out)
    for k, v in h_src.kv.items():  # every original key survives with its value
        assert k in h_out.kv
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, h_out.kv[k])
        else:
            assert v == h_out.kv[k], k
    data_src = before[h_src.data_offset:]
    data_out = out.read_bytes()[h_out.data_offset:]
    assert data_src == data_out
    assert [(t.name, t.shape, t.type, t.offset) for t in h_src.tensors] == \
           [(t.name, t.shape, t.type, t.offset) for t in h_out.tensors]
    # a second calibration replaces the glass.* keys instead of adding a second set
    p2 = random_prior(seed=5, source="corpus:x.txt")
    out2 = tmp_path / "cal2.gguf"
    gguf_meta.write_with_prior(out, out2, p2)
    assert_same_prior(p2, gguf_meta.read_prior(out2))
    assert len(read_header(out2).kv) == len(h_out.kv)


def test_model_without_metadata_has_no_prior(tiny_model_factory):
    assert gguf_meta.read_prior(tiny_model_factory("llama", "f32")) is None


def test_writer_refuses_in_place_and_mismatch(tiny_model_factory, tmp_path):
    src = tiny_model_factory("llama", "f32")
    with pytest.raises(PriorError, match="new file"):
        gguf_meta.write_with_prior(src, src, random_prior())
    with pytest.raises(PriorError, match="n_ff"):
        gguf_meta.write_with_prior(src, tmp_path / "x.gguf", random_prior(n_ff=(N_FF, 128)))
    assert not list(tmp_path.glob("*.part")) and not (tmp_path / "x.gguf").exists()


def _rewrite_glass_key(src, dst, key, blob):
    """Copy src with one glass.* key's bytes replaced by `blob` (a packed key/value)."""
    h = read_header(src)
    raw = bytearray(src.read_bytes())
    a, b = h.kv_span[key]
    new = raw[:a] + blob + raw[b:]
    # keep the data section aligned: pad between the tensor infos and the data
    shift = len(blob) - (b - a)
    ti_end = h.tensor_info_span[1] + shift
    data_old = h.data_offset + shift
    data_new = -(-ti_end // h.alignment) * h.alignment
    new = new[:ti_end] + b"\0" * (data_new - ti_end) + new[data_old:]
    dst.write_bytes(bytes(new))
    return dst


@pytest.mark.parametrize("key, blob, needle", [
    ("glass.version", pack_kv("glass.version", 7, U32), "version 7 is not supported"),
    ("glass.n_layer", pack_kv("glass.n_layer", 5, U32), "5 layers but the model has 2"),
    ("glass.n_ff", pack_kv("glass.n_ff", np.array([N_FF, 64], np.uint32), ARRAY, U32), "layer 1 has n_ff 64"),
    ("glass.act_rank.0", pack_kv("glass.act_rank.0", np.zeros(N_FF, np.int32), ARRAY, I32), "not a permutation"),
    ("glass.imp_rank.1", pack_kv("glass.imp_rank.1", np.arange(10, dtype=np.int32), ARRAY, I32), "wrong length"),
    ("glass.settings", pack_kv("glass.settings", "{oops", STRING), "not JSON"),
])
def test_mismatched_metadata_is_a_clear_error(tiny_model_factory, tmp_path, key, blob, needle):
    good = tmp_path / "good.gguf"
    gguf_meta.write_with_prior(tiny_model_factory("llama", "f32"), good, random_prior())
    bad = _rewrite_glass_key(good, tmp_path / "bad.gguf", key, blob)
    with pytest.raises(PriorError, match=needle):
        gguf_meta.read_prior(bad)
    r = cli("info", str(bad))
    assert r.returncode == 0 and "INVALID" in r.stdout and needle.split()[0] in r.stdout
    r = cli("run", str(bad), "--method", "a-glass", "-n", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert len([x for x in r.stderr.splitlines() if x.startswith("glass-edge: error")]) == 1, r.stderr


def test_truncated_and_corrupt_calibrated_files(tiny_model_factory, tmp_path):
    good = tmp_path / "good.gguf"
    gguf_meta.write_with_prior(tiny_model_factory("llama", "f32"), good, random_prior())
    raw = good.read_bytes()
    h = read_header(good)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(raw[: h.kv_span["glass.act_score.1"][0] + 20])  # ends inside the glass.* arrays
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + os.urandom(200))
    for f in (cut, junk):
        with pytest.raises(PriorError):
            gguf_meta.read_prior(f)
        r = cli("info", str(f))
        assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.startswith("glass-edge: error"), r.stderr


# ----------------------------------------------------------------------------------------------
# calibration end to end (tiny synthetic model), info, run --prior, the first-use cache
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", [["nps"], ["builtin"]])
def test_calibrate_end_to_end(tiny_model_factory, tmp_path, cache_env, source):
    _, env = cache_env
    model = tiny_model_factory("llama", "q8_0")
    out = tmp_path / "cal.gguf"
    r = cli("calibrate", str(model), "-o", str(out), "--source", *source, "--samples", "4", "--tokens", "16",
            "-t", "2", env=env)
    assert r.returncode == 0, r.stderr
    prior = gguf_meta.read_prior(out)
    assert prior.source == ("nps" if source == ["nps"] else "corpus:builtin")
    assert prior.n_tokens == 4 * 16
    for il in range(N_LAYER):
        s = prior.act_score[il]
        assert s.shape == (N_FF,) and np.all(s >= 0) and s.sum() > 0
        # each token's h was normalised to unit norm: the mean statistic sums to 1 over neurons
        np.testing.assert_allclose(s.sum(), 1.0, rtol=1e-3)
        np.testing.assert_allclose(prior.imp_score[il].sum(), 1.0, rtol=1e-3)
    r = cli("info", str(out), env=env)
    assert r.returncode == 0 and "glass prior  version 1" in r.stdout and "64 tokens" in r.stdout
    r = cli("info", str(model), env=env)
    assert "glass prior  none" in r.stdout and "ffn_down" in r.stdout
    r = cli("run", str(model), "--method", "i-glass", "--prior", str(out), "-n", "4", "--temp", "0", env=env)
    assert r.returncode == 0, r.stderr
    r = cli("run", str(model), "--method", "a-glass", "--prior", str(tmp_path / "nope.gguf"), "-n", "4", env=env)
    assert r.returncode == 1 and "prior file not found" in r.stderr


def test_calibrate_bad_input(tiny_model_factory, tmp_path):
    model = tiny_model_factory("llama", "f32")
    for args, needle in [
        (["calibrate", str(model), "-o", str(model)], "new file"),
        (["calibrate", str(model), "-o", str(tmp_path / "x.gguf"), "--source", str(tmp_path / "none.txt")], "not found"),
        (["calibrate", str(model), "-o", str(tmp_path / "x.gguf"), "--samples", "0"], "positive"),
        (["calibrate", str(tmp_path / "missing.gguf"), "-o", str(tmp_path / "x.gguf")], "not found"),
    ]:
        r = cli(*args)
        assert r.returncode != 0 and needle in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert not (tmp_path / "x.gguf").exists()


def test_calibrate_interrupted_leaves_no_file(tiny_model_factory, tmp_path, cache_env):
    _, env = cache_env
    model = tiny_model_factory("llama", "f32")
    out = tmp_path / "cal.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "glass_edge.cli", "calibrate", str(model), "-o", str(out),
                             "--samples", "100000", "--tokens", "64"], env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(8)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".cal.gguf.*"))


def test_first_use_prior_is_computed_once_and_cached(tiny_model_factory, cache_env, monkeypatch):
    from glass_edge import GlassLlama
    import glass_edge.calibrate as cal
    cache, _ = cache_env
    model = tiny_model_factory("llama", "f32")
    monkeypatch.setattr("glass_edge.prior.FIRST_USE_SAMPLES", 2)
    monkeypatch.setattr("glass_edge.prior.FIRST_USE_TOKENS", 8)
    llm = GlassLlama(str(model), method="a-glass", density=0.5, n_ctx=128, verbose=False)
    files = list((cache / "priors").glob("*.npz"))
    assert len(files) == 1 and llm.global_prior().n_tokens == 16
    first = llm.global_prior()
    del llm

    def fail(*a, **k):
        raise AssertionError("the cached prior should have been reused")
    monkeypatch.setattr(cal, "compute_nps_prior", fail)
    llm = GlassLlama(str(model), method="i-glass", density=0.5, n_ctx=128, verbose=False)
    assert_same_prior(first, llm.global_prior())
    out = llm.create_completion("a b c", max_tokens=4, temperature=0)
    assert out["choices"][0]["text"] is not None and llm.sparse_ops > 0
