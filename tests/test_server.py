"""`glass-edge serve` on gemma-3-270m, started on a free loopback port in a subprocess and driven
with the official `openai` client (and raw HTTP for the malformed requests a client would refuse)."""
import concurrent.futures as cf
import http.client
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[1]
DENSITY = 0.5
N_CTX = 512


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server's base URL; its log is in the module's tmp dir."""
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    env = dict(os.environ)  # the glass_edge this interpreter imports
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "glass_edge.cli", "serve", "--port", "0", "-c", str(N_CTX),
                                 "-t", "2", "--density", str(DENSITY), "--method", "griffin", "-s", "1",
                                 "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline, url = time.time() + 300, None
        while url is None:
            assert proc.poll() is None, f"server exited: {log_path.read_text()}"
            assert time.time() < deadline, f"server did not start: {log_path.read_text()}"
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", log_path.read_text())
            url = m.group(1) if m else time.sleep(0.2)
        while True:  # the socket is bound before the model loads: wait until it answers
            try:
                get(url, "/health")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.time() < deadline
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log_path.read_text()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=300)


def get(url, path):
    with urllib.request.urlopen(url + path, timeout=60) as r:
        return json.load(r)


def post_raw(url, path, body: bytes, content_type="application/json"):
    """(status, parsed JSON body) of a POST with exactly these bytes."""
    req = urllib.request.Request(url + path, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def chat(client, text, **kw):
    return client.chat.completions.create(model="gemma", messages=[{"role": "user", "content": text}],
                                          max_tokens=kw.pop("max_tokens", 6), temperature=0, **kw)


# ----------------------------------------------------------------------------------------------
# the routes
# ----------------------------------------------------------------------------------------------

def test_health_and_models(server, client):
    health = get(server, "/health")
    assert health["status"] == "ok" and health["density"] == DENSITY and health["n_ctx"] == N_CTX
    models = client.models.list()
    assert [m.id for m in models.data] == [health["model"]] and models.data[0].object == "model"


def test_completion(client):
    out = client.completions.create(model="gemma", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert out.object == "text_completion" and out.choices[0].text and out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 6 and out.usage.prompt_tokens == 6
    assert out.usage.total_tokens == 12
    glass = out.model_extra["glass"]
    assert glass["density"] == DENSITY and glass["method"] == "griffin"
    assert glass["mask_density"] == pytest.approx(round(DENSITY * 2048) / 2048)
    assert glass["eval_tokens_per_second"] > 0 and glass["prompt_tokens_per_second"] > 0 and glass["mask_ms"] > 0


def test_chat_streaming_and_non_streaming_agree(client):
    whole = chat(client, "Say hello.")
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    text = whole.choices[0].message.content
    assert text and whole.usage.completion_tokens == 6
    chunks = list(chat(client, "Say hello.", stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].model_extra["glass"]["density"] == DENSITY
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump()["total_tokens"] == whole.usage.total_tokens


def test_completion_streaming(client):
    whole = client.completions.create(model="gemma", prompt="Once upon a time", max_tokens=8, temperature=0)
    stream = client.completions.create(model="gemma", prompt="Once upon a time", max_tokens=8, temperature=0,
                                       stream=True)
    assert "".join(c.choices[0].text for c in stream) == whole.choices[0].text


def test_glass_field_controls_one_request(server, client):
    out = chat(client, "Hi", max_tokens=3, extra_body={"glass": {"density": 0.25}})
    assert out.model_extra["glass"]["density"] == 0.25
    assert out.model_extra["glass"]["mask_density"] == pytest.approx(round(0.25 * 2048) / 2048)
    dense = chat(client, "Hi", max_tokens=3, extra_body={"glass": {"method": "dense"}})
    assert dense.model_extra["glass"]["method"] == "dense" and dense.model_extra["glass"]["mask_density"] == 1.0
    after = chat(client, "Hi", max_tokens=3)
    assert after.model_extra["glass"]["density"] == DENSITY and after.model_extra["glass"]["method"] == "griffin"
    assert get(server, "/health")["density"] == DENSITY


def test_ten_concurrent_requests_all_answered_and_not_interleaved(client):
    """Each answer of a concurrent burst equals the same (greedy) request made alone."""
    def ask(i):
        if i % 3 == 0:
            return chat(client, f"Count to {i}.", max_tokens=5).choices[0].message.content
        if i % 3 == 1:
            stream = chat(client, f"Name {i} animals.", max_tokens=5, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return client.completions.create(model="gemma", prompt=f"Fact number {i}:", max_tokens=5,
                                         temperature=0).choices[0].text

    alone = [ask(i) for i in range(10)]
    with cf.ThreadPoolExecutor(10) as pool:
        together = list(pool.map(ask, range(10)))
    assert together == alone
    assert all(together) and len(set(together)) > 3


def test_client_disconnect_mid_stream_frees_the_engine(server, client):
    host, port = server.removeprefix("http://").split(":")
    before = get(server, "/health")["cancelled_streams"]
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", "/v1/completions", headers={"Content-Type": "application/json"},
                 body=json.dumps({"prompt": "Once upon a time", "max_tokens": 400, "stream": True}))
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: {")
    conn.sock.close()  # hang up after the first chunk
    conn.close()
    deadline = time.time() + 120
    while True:
        health = get(server, "/health")
        if health["cancelled_streams"] > before and not health["running"]:
            break
        assert time.time() < deadline, health
        time.sleep(0.2)
    assert chat(client, "Hi", max_tokens=2).choices[0].message.content is not None


# ----------------------------------------------------------------------------------------------
# malformed requests: 4xx in OpenAI's error shape, and the server stays up
# ----------------------------------------------------------------------------------------------

LONG_PROMPT = "word " * 600

BAD = [
    ("/v1/completions", b"{not json", None),
    ("/v1/completions", b"[1, 2]", None),
    ("/v1/completions", b"", None),
    ("/v1/completions", b'{"max_tokens": 4}', "prompt"),
    ("/v1/completions", b'{"prompt": 5}', "prompt"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": "many"}', "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 0}', "max_tokens"),
    ("/v1/completions", b'{"prompt": "x", "temperature": -1}', "temperature"),
    ("/v1/completions", b'{"prompt": "x", "n": 3}', "n"),
    ("/v1/completions", b'{"prompt": ["a", "b"]}', "prompt"),
    ("/v1/completions", b'{"prompt": "x", "glass": {"density": 0}}', "glass.density"),
    ("/v1/completions", b'{"prompt": "x", "glass": {"density": 1.5}}', "glass.density"),
    ("/v1/completions", b'{"prompt": "x", "glass": {"density": "half"}}', "glass.density"),
    ("/v1/completions", b'{"prompt": "x", "glass": {"method": "magic"}}', "glass.method"),
    ("/v1/completions", b'{"prompt": "x", "glass": {"speed": 2}}', "glass.speed"),
    ("/v1/completions", b'{"prompt": "x", "glass": 3}', "glass"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 100000}', "max_tokens"),
    ("/v1/completions", json.dumps({"prompt": LONG_PROMPT, "max_tokens": 4}).encode(), "prompt"),
    ("/v1/completions", json.dumps({"prompt": LONG_PROMPT, "stream": True}).encode(), "prompt"),
    ("/v1/chat/completions", b"{}", "messages"),
    ("/v1/chat/completions", b'{"messages": []}', "messages"),
    ("/v1/chat/completions", b'{"messages": "hello"}', "messages"),
    ("/v1/chat/completions", b'{"messages": [{"content": "hi"}]}', "messages.0.role"),
    ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "hi"}]}', "messages.0.role"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 7}]}', "messages.0.content"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "stream": "maybe"}', "stream"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}',
     "max_tokens"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": LONG_PROMPT}],
                                         "stream": True}).encode(), "messages"),
]


@pytest.mark.parametrize("path,body,param", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_malformed_requests_get_400_with_openai_error_shape(server, path, body, param):
    status, reply = post_raw(server, path, body)
    assert status == 400, reply
    assert set(reply) == {"error"} and set(reply["error"]) == {"message", "type", "param", "code"}
    assert reply["error"]["type"] == "invalid_request_error" and reply["error"]["message"]
    assert reply["error"]["param"] == param


def test_unknown_routes_and_methods(server):
    for path, method, status in [("/v1/nothing", "GET", 404), ("/v1/completions", "GET", 405)]:
        req = urllib.request.Request(server + path, method=method)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == status and set(json.loads(e.value.read())["error"]) >= {"message", "type"}


def test_openai_client_sees_bad_requests_as_bad_request_errors(server, client):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, "Hi", max_tokens=N_CTX)
    assert e.value.code == "context_length_exceeded" and e.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError):
        chat(client, "Hi", extra_body={"glass": {"method": "nope"}})
    assert get(server, "/health")["status"] == "ok"


def test_a_taken_port_fails_with_one_line(server):
    port = server.rsplit(":", 1)[1]
    env = dict(os.environ)  # the glass_edge this interpreter imports
    proc = subprocess.run([sys.executable, "-m", "glass_edge.cli", "serve", "--port", port], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith(f"glass-edge: error: cannot listen on 127.0.0.1:{port}")
    assert proc.stderr.count("\n") == 1
