"""`mmbert serve`: the real server process, called with the official `openai` client and httpx.

A tiny model with a tokenizer trained in the test is exported, `python -m mmbert serve` is started
on a free port (fp32, one thread), and its vectors are compared with `mmbert.inference.embed` on
the same texts in this process. The batching worker is also unit-tested in-process.
"""

import functools
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from mmbert.export.hf import save_pretrained  # noqa: E402
from mmbert.serve import Batcher, Job, decode_base64, gather  # noqa: E402
from serve_proc import start_serve  # noqa: E402

KEY = "test-key"
WORDS = ("the cat sat on the mat der Hund lief weit weg le chat noir dort "
         "a quick brown fox jumps over the lazy dog").split()
HIDDEN, LAYERS, INTERMEDIATE = 64, 2, 96
# Server and test both run fp32 on this machine, but a request's texts share a forward pass with
# other clients' texts, so GEMMs run with other row counts (other blocking and accumulation order).
# Per layer that moves each output by ≲ K·eps·|x| (worst-case rounding of a K-term dot product,
# K = the widest contraction); LayerNorm keeps |x| = O(1), and errors add up over the layers.
# Scaled by the largest |value| of the reference vectors.
EPS32 = torch.finfo(torch.float32).eps
TOL_REL = LAYERS * max(HIDDEN, INTERMEDIATE) * EPS32  # ≈ 2.3e-5


def _texts(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 30)))) for _ in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from mmbert.model import EncoderConfig, build_model
    from mmbert.tokenizer import train_tokenizer_from_texts

    root = tmp_path_factory.mktemp("serve")
    tok = train_tokenizer_from_texts([" ".join(WORDS)] * 30, 512)
    cfg = EncoderConfig.from_preset("tiny", vocab_size=tok.vocab_size, hidden_size=HIDDEN,
                                    intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
                                    num_attention_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    m = build_model(cfg)
    m.tokenizer = tok
    save_pretrained(m, root / "tiny-embedder")
    return root / "tiny-embedder"


@pytest.fixture(scope="module")
def reference(model_dir):
    import mmbert
    from mmbert.inference import embed

    m = mmbert.from_pretrained(model_dir, head="none")
    return lambda inputs, pooling="mean": embed(m, inputs, pooling=pooling, dtype="fp32", threads=1)


def _start(model_dir, log_path, *extra):
    env = dict(os.environ, MMBERT_API_KEY="")  # only --api-key below counts
    return start_serve(["--model", str(model_dir), "--dtype", "fp32", "--threads", "1", *extra], log_path, env=env)


def _stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    proc, url = _start(model_dir, log, "--api-key", KEY, "--max-inputs", "40", "--max-length", "64",
                       "--max-batch-tokens", "1024")
    yield url
    _stop(proc)


def _assert_close(got, ref):
    got = torch.as_tensor(np.asarray(got, dtype=np.float32))
    tol = TOL_REL * float(ref.abs().max())  # the derived fp32 bound (TOL_REL above) × the largest |value|
    torch.testing.assert_close(got, ref, atol=tol, rtol=0)


def _metric(url, name):
    text = httpx.get(url + "/metrics").text
    return int(re.search(rf"^mmbert_{name} (\d+)$", text, re.M).group(1))


def test_openai_client_under_32_concurrent_clients_matches_encode(server, reference):
    openai = pytest.importorskip("openai")
    jobs = []  # a list of strings, a single string, or token-id lists (used as given)
    for i in range(64):
        texts = _texts(1 + i % 7, seed=i)
        jobs.append(texts[0] if i % 5 == 0 else _tok(server, texts) if i % 4 == 3 else texts)
    expected = [reference(j if isinstance(j, list) else [j]) for j in jobs]
    before = _metric(server, "batches_total")

    def call(i):
        client = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)
        fmt = "float" if i % 2 else openai.NOT_GIVEN  # the client's default asks for base64
        r = client.embeddings.create(model="tiny-embedder", input=jobs[i], encoding_format=fmt)
        return i, r

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, range(len(jobs))))
    n_tokens = 0
    for i, r in results:
        assert [d.index for d in r.data] == list(range(len(expected[i])))
        assert r.model == "tiny-embedder"
        _assert_close([d.embedding for d in r.data], expected[i])
        n_tokens += r.usage.prompt_tokens
    # every token counted once; requests were gathered into fewer forward passes than requests
    assert n_tokens == sum(len(x) for j in jobs for x in (j if isinstance(j[0], list) else _tok(server, j)))
    assert _metric(server, "batches_total") - before < len(jobs)


@functools.lru_cache(maxsize=None)
def _server_tokenizer(server):
    from tokenizers import Tokenizer

    info = httpx.get(server + "/info").json()
    return Tokenizer.from_file(os.path.join(info["model_path"], "tokenizer.json"))


def _tok(server, inputs):
    """Token ids as the server's tokenizer makes them (tokenizer.json of the served directory)."""
    return [e.ids for e in _server_tokenizer(server).encode_batch(inputs if isinstance(inputs, list) else [inputs])]


def test_token_id_inputs_and_base64(server, reference):
    texts = _texts(3, seed=7)
    ids = _tok(server, texts)
    h = {"Authorization": f"Bearer {KEY}"}
    for inp, exp in ((ids, reference(ids)), (ids[0], reference(ids[:1]))):
        r = httpx.post(server + "/v1/embeddings", json={"input": inp, "encoding_format": "base64"}, headers=h)
        assert r.status_code == 200, r.text
        _assert_close([decode_base64(d["embedding"]) for d in r.json()["data"]], exp)
        assert r.json()["usage"]["total_tokens"] == sum(len(x) for x in (inp if isinstance(inp[0], list) else [inp]))
    ok = httpx.post(server + "/v1/embeddings", json={"input": "a cat", "dimensions": HIDDEN}, headers=h)
    assert ok.status_code == 200 and len(ok.json()["data"][0]["embedding"]) == HIDDEN


def test_tei_embed_health_info(server, reference):
    h = {"Authorization": f"Bearer {KEY}"}
    texts = _texts(5, seed=3)
    r = httpx.post(server + "/embed", json={"inputs": texts}, headers=h)
    assert r.status_code == 200, r.text
    ref = reference(texts)
    _assert_close(r.json(), torch.nn.functional.normalize(ref, dim=-1))  # TEI normalizes by default
    raw = httpx.post(server + "/embed", json={"inputs": texts[0], "normalize": False}, headers=h).json()
    _assert_close(raw, ref[:1])
    assert httpx.get(server + "/health").json() == {"status": "ok"}
    info = httpx.get(server + "/info").json()
    assert (info["model_id"], info["dims"], info["max_input_length"], info["model_dtype"], info["pooling"]) == (
        "tiny-embedder", HIDDEN, 64, "float32", "mean")
    models = httpx.get(server + "/v1/models", headers=h).json()
    assert [m["id"] for m in models["data"]] == ["tiny-embedder"]


@pytest.mark.parametrize("path,body,status,needle", [
    ("/v1/embeddings", {"input": []}, 422, "empty"),
    ("/v1/embeddings", {"input": ""}, 422, "empty"),
    ("/v1/embeddings", {"input": ["ok", " "]}, 422, "input[1]"),
    ("/v1/embeddings", {"input": [[]]}, 422, "empty token list"),
    ("/v1/embeddings", {"input": [[1, 2, 10**6]]}, 422, "token ids"),
    ("/v1/embeddings", {"input": ["a", [1, 2]]}, 422, "mixes"),
    ("/v1/embeddings", {"input": ["a"] * 41}, 413, "--max-inputs 40"),
    ("/v1/embeddings", {"input": ["cat " * 100]}, 413, "max length 64"),
    ("/v1/embeddings", {"input": "a", "dimensions": 8}, 422, f"{HIDDEN} dimensions"),
    ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 422, "encoding_format"),
    ("/v1/embeddings", {"input": "a", "model": "gpt-5"}, 404, "tiny-embedder"),
    ("/v1/embeddings", {"input": "a", "temperature": 1}, 422, "temperature"),
    ("/embed", {"inputs": []}, 422, "empty"),
    ("/embed", {"inputs": ["cat " * 100], "truncate": False}, 413, "max length 64"),
])
def test_bad_requests_get_json_errors_and_the_server_lives(server, path, body, status, needle):
    r = httpx.post(server + path, json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    message = err["message"] if path.startswith("/v1/") else err
    assert needle in message, message
    assert httpx.get(server + "/health").status_code == 200


def test_truncation_when_asked_and_api_key(server, reference, model_dir):
    h = {"Authorization": f"Bearer {KEY}"}
    long = "the cat sat on the mat " * 30
    r = httpx.post(server + "/embed", json={"inputs": [long], "truncate": True, "normalize": False}, headers=h)
    assert r.status_code == 200
    ids = _tok(server, [long])[0]
    cut = ids[:63] + [ids[-1]]  # 64 tokens, the closing separator kept (as embed's truncation does)
    _assert_close(r.json(), reference([cut]))
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for path, body in (("/v1/embeddings", {"input": "a"}), ("/embed", {"inputs": "a"})):
            r = httpx.post(server + path, json=body, headers=headers)
            assert r.status_code == 401 and "API key" in r.text


def test_disconnecting_clients_do_not_poison_batches(server, reference):
    """Clients that send a large request and hang up at once, while 16 others are being served."""
    payload = json.dumps({"input": _texts(40, seed=99)}).encode()
    port = int(server.rsplit(":", 1)[1])

    def hang_up():
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
        s.close()

    texts = [_texts(5, seed=200 + i) for i in range(16)]

    def call(i):
        if i % 2:
            hang_up()
        return httpx.post(server + "/v1/embeddings", json={"input": texts[i]},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=120)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(16)))
    for i, r in enumerate(results):
        assert r.status_code == 200, r.text
        _assert_close([d["embedding"] for d in r.json()["data"]], reference(texts[i]))
    assert httpx.get(server + "/health").status_code == 200
    assert _metric(server, "errors_total") == 0
    # the hung-up requests were noticed (their data and FIN arrive together, so the server sees the
    # disconnect before their batch finishes) and their inputs dropped, not answered
    assert _metric(server, "dropped_inputs_total") > 0


def test_graceful_shutdown_finishes_in_flight_requests(model_dir, tmp_path, reference):
    """A request whose headers arrived before SIGTERM still gets its answer; new connections are refused."""
    proc, url = _start(model_dir, tmp_path / "server.log")
    try:
        port = int(url.rsplit(":", 1)[1])
        texts = _texts(4, seed=5)
        payload = json.dumps({"input": texts}).encode()
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload[:10])
        time.sleep(1.5)  # headers parsed (the loop is idle; generous for a loaded machine): in flight
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        with pytest.raises(httpx.TransportError):  # the listening socket is closed
            httpx.get(url + "/health", timeout=5)
        s.sendall(payload[10:])
        s.settimeout(60)
        raw = b""
        while b"\r\n\r\n" not in raw or len(raw.split(b"\r\n\r\n", 1)[1]) < _content_length(raw):
            chunk = s.recv(65536)
            if not chunk:
                break
            raw += chunk
        s.close()
        head, body = raw.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), raw[:300]
        _assert_close([d["embedding"] for d in json.loads(body)["data"]], reference(texts))
        assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean shutdown
        assert "stopped after" in (tmp_path / "server.log").read_text()
    finally:
        _stop(proc)


def _content_length(raw: bytes) -> int:
    m = re.search(rb"content-length: (\d+)", raw, re.I)
    return int(m.group(1)) if m else 1 << 30


# ----------------------------------------------------------------------------- the batcher in-process
def test_gather_takes_queued_jobs_up_to_the_budget_and_drops_abandoned_ones():
    jobs = [Job([[1] * 10], None), Job([[1] * 30, [1] * 20], None), Job([[1] * 5], None), Job([[1] * 50], None)]
    jobs[2].abandoned = True
    q = deque(jobs)
    taken, dropped = gather(q, budget=60)  # the abandoned job at the front is dropped on the way
    assert taken == jobs[:2] and dropped == 1 and list(q) == jobs[3:]
    taken, dropped = gather(q, budget=60)
    assert taken == [jobs[3]] and dropped == 0 and not q
    big = deque([Job([[1] * 500], None), Job([[1]], None)])
    assert [j.tokens for j in gather(big, budget=60)[0]] == [500]  # an oversized job runs alone


def test_batcher_batches_queued_jobs_and_isolates_a_failing_one():
    calls = []

    def run_batch(ids):
        calls.append(len(ids))
        if any(x[0] == 666 for x in ids):
            raise RuntimeError("poison")
        return torch.tensor([[float(x[0])] for x in ids])

    b = Batcher(run_batch, max_batch_tokens=100)
    got = {}
    done = threading.Event()

    def job(first, n):
        def cb(result):
            got[first] = result
            if len(got) == 4:
                done.set()
        return Job([[first + k, 0] for k in range(n)], cb)

    for j in (job(10, 2), job(20, 3), job(666, 1), job(30, 1)):
        b.submit(j)  # queued before the worker starts: all fit in one budget
    b.start()
    assert done.wait(10)
    b.close(10)
    assert calls[0] == 7 and calls[1:] == [2, 3, 1, 1]  # one batch, then retried job by job
    assert got[10].flatten().tolist() == [10.0, 11.0] and got[30].flatten().tolist() == [30.0]
    assert isinstance(got[666], RuntimeError)
    assert b.stats["errors"] == 1 and not b.thread.is_alive()
