"""The HTTP server: the real app through TestClient / httpx, and one real uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import threading
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from serve_helpers import Gate, start_server  # noqa: E402
from taskembed import late_chunking  # noqa: E402
from taskembed.serve import ServerSettings, create_app  # noqa: E402
from taskembed.serve.cli import main as serve_main  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:no task given")

NAME = "tiny-model"
KEY = "s3cret-key-for-tests"
TEXTS = [
    "The cat sits on the warm windowsill.",
    "How do I change the default font size?",
    "Die Katze sitzt auf der warmen Fensterbank.",
    "猫は暖かい窓辺に座って",
]
LONG = " ".join(TEXTS * 4)  # well over the 64-token limit the test app uses


def settings(**kw) -> ServerSettings:
    base = dict(model_names=[NAME, "jina-embeddings-v3"], max_length=64, max_inputs=8, max_queue=16,
                max_body_bytes=8192, max_doc_tokens=400, late_window=32, late_overlap=4)
    base.update(kw)
    return ServerSettings(**base)


@pytest.fixture(scope="module")
def client(tiny):
    with TestClient(create_app(tiny, settings())) as c:
        yield c


def post(client, body, path="/v1/embeddings", **kw):
    return client.post(path, json=body, **kw)


def vectors(resp) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.array([d["embedding"] for d in resp.json()["data"]])


def b64(resp, dtype) -> np.ndarray:
    assert resp.status_code == 200, resp.text
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype=dtype) for d in resp.json()["data"]])


# --- embeddings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["retrieval.query", "retrieval.passage", "text-matching", None])
@pytest.mark.parametrize("dims", [None, 8, 32])
def test_float_equals_encode(client, tiny, task, dims):
    r = post(client, {"input": TEXTS, "model": NAME, "task": task, "dimensions": dims})
    got = vectors(r)
    want = tiny.encode(TEXTS, task=task, dimensions=dims)
    np.testing.assert_allclose(got, want, atol=1e-5)
    body = r.json()
    assert body["object"] == "list" and body["model"] == NAME
    assert [d["index"] for d in body["data"]] == list(range(len(TEXTS)))
    assert all(d["object"] == "embedding" for d in body["data"])
    n = sum(tiny.count_tokens(TEXTS, task=task))
    assert body["usage"] == {"prompt_tokens": n, "total_tokens": n}


def test_single_string_and_model_alias(client, tiny):
    got = vectors(post(client, {"input": TEXTS[0], "model": "jina-embeddings-v3", "task": "separation"}))
    np.testing.assert_allclose(got, tiny.encode(TEXTS[:1], task="separation"), atol=1e-5)


def test_jina_text_objects(client, tiny):
    got = vectors(post(client, {"input": [{"text": t} for t in TEXTS], "task": "text-matching"}))
    np.testing.assert_allclose(got, tiny.encode(TEXTS, task="text-matching"), atol=1e-5)
    r = post(client, {"input": [{"image": "x.png"}]})
    assert r.status_code == 400 and "input[0] must be a string" in r.json()["error"]["message"]


def test_model_may_be_omitted_and_default_task_applies(tiny):
    with TestClient(create_app(tiny, settings(default_task="classification"))) as c:
        got = vectors(post(c, {"input": TEXTS}))
        np.testing.assert_allclose(got, tiny.encode(TEXTS, task="classification"), atol=1e-5)
        # An explicit null means "no adapter", not "the default".
        got = vectors(post(c, {"input": TEXTS, "task": None}))
        np.testing.assert_allclose(got, tiny.encode(TEXTS, task=None), atol=1e-5)


def test_mixed_tasks_equal_separate_calls(client, tiny):
    tasks = ["retrieval.query", "retrieval.passage", None, "retrieval.query"]
    mixed = vectors(post(client, {"input": TEXTS, "task": tasks, "dimensions": 16}))
    for i, (t, x) in enumerate(zip(tasks, TEXTS, strict=True)):
        alone = vectors(post(client, {"input": [x], "task": t, "dimensions": 16}))
        np.testing.assert_allclose(mixed[i], alone[0], atol=1e-5)
    np.testing.assert_allclose(mixed, tiny.encode(TEXTS, task=tasks, dimensions=16), atol=1e-5)


def test_base64_decodes_to_the_same_floats(client):
    body = {"input": TEXTS, "task": "retrieval.query", "dimensions": 32}
    floats = vectors(post(client, {**body, "encoding_format": "float"})).astype(np.float32)
    np.testing.assert_array_equal(b64(post(client, {**body, "encoding_format": "base64"}), "<f4"), floats)
    np.testing.assert_array_equal(b64(post(client, {**body, "embedding_type": "base64"}), "<f4"), floats)


@pytest.mark.parametrize("etype,dtype", [("int8", np.int8), ("uint8", np.uint8), ("binary", np.int8),
                                         ("ubinary", np.uint8)])
def test_quantised_types(client, tiny, etype, dtype):
    body = {"input": TEXTS, "task": "separation", "dimensions": 32, "embedding_type": etype}
    got = vectors(post(client, body))
    want = tiny.encode(TEXTS, task="separation", dimensions=32, precision=etype)
    assert got.shape == want.shape  # binary: 32 dims -> 4 bytes
    # The same float can land a hair either side of a rounding edge after a different padding.
    assert np.abs(got.astype(int) - want.astype(int)).max() <= (1 if "int" in etype else 255)
    assert (got == want).mean() > 0.95
    packed = b64(post(client, {**body, "encoding_format": "base64"}), dtype)
    np.testing.assert_array_equal(packed, got)


def test_not_normalised(client, tiny):
    got = vectors(post(client, {"input": TEXTS, "task": "separation", "normalized": False, "dimensions": 16}))
    np.testing.assert_allclose(got, tiny.encode(TEXTS, task="separation", normalize=False, dimensions=16),
                               atol=1e-5)
    assert not np.allclose(np.linalg.norm(got, axis=1), 1)


def test_truncate(client, tiny):
    r = post(client, {"input": [LONG], "task": "retrieval.query"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_long"
    assert "truncate" in r.json()["error"]["message"]
    got = vectors(post(client, {"input": [LONG, TEXTS[0]], "task": "retrieval.query", "truncate": True}))
    want = tiny.encode([LONG, TEXTS[0]], task="retrieval.query", truncate=True, max_length=64)
    np.testing.assert_allclose(got, want, atol=1e-5)


# --- late chunking -------------------------------------------------------------------------------


@pytest.mark.parametrize("path,flag", [("/v1/late_chunking", False), ("/v1/embeddings", True)])
def test_late_chunking(client, tiny, path, flag):
    body = {"input": TEXTS, "task": "retrieval.passage", "dimensions": 16}
    if flag:
        body["late_chunking"] = True
    r = post(client, body, path=path)
    want = late_chunking.late_chunk(tiny, TEXTS, task="retrieval.passage", dimensions=16, window=32, overlap=4)
    np.testing.assert_allclose(vectors(r), want, atol=1e-5)
    n = late_chunking.plan(tiny, TEXTS, "retrieval.passage").num_tokens
    assert n > 32  # the macro windows ran
    assert r.json()["usage"]["total_tokens"] == n
    plain = vectors(post(client, {"input": TEXTS, "task": "retrieval.passage", "dimensions": 16}))
    assert not np.allclose(vectors(r), plain, atol=1e-3)


def test_late_chunking_limits(client):
    r = post(client, {"input": [LONG] * 4, "task": "retrieval.passage"}, path="/v1/late_chunking")
    assert r.status_code == 400 and "late chunking" in r.json()["error"]["message"]
    r = post(client, {"input": TEXTS[:2], "task": ["retrieval.query", "separation"]}, path="/v1/late_chunking")
    assert r.status_code == 400 and "one task" in r.json()["error"]["message"]
    r = post(client, {"input": ["a", ""], "task": "separation"}, path="/v1/late_chunking")
    assert r.status_code == 400 and "empty string" in r.json()["error"]["message"]


# --- errors --------------------------------------------------------------------------------------

ERRORS = [
    (b"{not json", 400, "malformed JSON"),
    (b"", 400, "missing request body"),
    (b"[1, 2]", 400, "JSON object"),
    (b'"text"', 400, "JSON object"),
    (b"{}", 400, "missing required field 'input'"),
    (b'{"input": 5}', 400, "input must be a string or a list of strings"),
    (b'{"input": [[1, 2, 3]]}', 400, "token-id input is not supported"),
    (b'{"input": ["a", null]}', 400, "input[1] must be a string"),
    (b'{"input": []}', 400, "input is empty"),
    (b'{"input": ["a", ""]}', 400, "input[1] is an empty string"),
    (b'{"input": ["a","a","a","a","a","a","a","a","a"]}', 400, "too many inputs: 9 > 8"),
    (b'{"input": "a", "model": "gpt-4"}', 404, "model 'gpt-4' not found"),
    (b'{"input": "a", "model": 3}', 400, "model: "),
    (b'{"input": "a", "task": "retrieval"}', 400, "unknown task 'retrieval'"),
    (b'{"input": ["a", "b"], "task": ["separation", "nope"]}', 400, "unknown task 'nope'"),
    (b'{"input": ["a", "b"], "task": ["separation"]}', 400, "got 1 tasks for 2 inputs"),
    (b'{"input": "a", "task": 3}', 400, "task must be"),
    (b'{"input": "a", "dimensions": 12}', 400, "dimensions=12 not allowed"),
    (b'{"input": "a", "dimensions": "16"}', 400, "dimensions: Input should be a valid integer"),
    (b'{"input": "a", "dimensions": 16.5}', 400, "dimensions"),
    (b'{"input": "a", "dimensions": true}', 400, "dimensions"),
    (b'{"input": "a", "encoding_format": "hex"}', 400, "encoding_format"),
    (b'{"input": "a", "embedding_type": "int4"}', 400, "embedding_type"),
    (b'{"input": "a", "normalized": "no"}', 400, "normalized: Input should be a valid boolean"),
    (b'{"input": "a", "truncate": 1}', 400, "truncate"),
    (b'{"input": "a", "late_chunking": "yes"}', 400, "late_chunking"),
    (b'{"input": "a", "embedding_type": "int8", "normalized": false}', 400, "needs normalized=true"),
    (b'{"input": "a", "dimension": 16}', 400, "unknown field 'dimension'"),
    (b'{"input": "a", "user": 5}', 400, "user"),
]


@pytest.mark.parametrize("body,status,message", ERRORS)
def test_bad_requests(client, body, status, message):
    r = client.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert message in err["message"], err
    assert err["type"] and r.json()["detail"] == err["message"]


def test_oversized_body(client):
    big = {"input": ["word " * 1000] * 2}
    r = post(client, big)
    assert r.status_code == 413 and "8192 bytes" in r.json()["error"]["message"]

    def chunks():  # no content-length: the limit still holds
        for _ in range(10):
            yield b" " * 1000

    r = client.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_unknown_route_and_method(client):
    assert client.get("/v1/nothing").status_code == 404
    r = client.get("/v1/embeddings")
    assert r.status_code == 405 and r.json()["error"]["message"]


# --- models, health, metrics, docs -----------------------------------------------------------------


def test_models_health_metrics_docs(client, tiny):
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [NAME, "jina-embeddings-v3"]
    card = models["data"][0]
    assert card["object"] == "model" and card["dimensions"] == tiny.dimensions and card["tasks"] == tiny.tasks
    assert client.get(f"/v1/models/{NAME}").json()["id"] == NAME
    assert client.get("/v1/models/other").status_code == 404
    assert client.get("/health").json()["status"] == "ok"
    post(client, {"input": TEXTS, "task": "separation"})
    text = client.get("/metrics").text
    for name in ("taskembed_requests_total", "taskembed_tokens_total", "taskembed_batch_rows_bucket",
                 "taskembed_queue_seconds_bucket", "taskembed_request_seconds_bucket", "taskembed_queue_inputs"):
        assert name in text
    assert 'route="/v1/embeddings",status="200"' in text
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/v1/embeddings", "/v1/late_chunking", "/v1/models", "/health", "/metrics"} <= set(spec["paths"])


# --- API keys ------------------------------------------------------------------------------------


def test_api_keys(tiny, caplog):
    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(tiny, settings(api_keys=["other-key", KEY]))) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                        {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer {KEY}x"}):
            for method, path in (("post", "/v1/embeddings"), ("get", "/v1/models"), ("get", "/metrics")):
                r = c.request(method, path, json={"input": "a"}, headers=headers)
                assert r.status_code == 401, (headers, path)
                assert r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["error"]["message"]
        ok = {"Authorization": f"Bearer {KEY}"}
        assert c.post("/v1/embeddings", json={"input": "a", "task": "separation"}, headers=ok).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": "Bearer other-key"}).status_code == 200
        assert c.get("/health").status_code == 200  # liveness needs no key
    assert KEY not in caplog.text


# --- backpressure, disconnects (httpx on the ASGI app, worker held by a gate) ----------------------


def test_queue_full_is_503_and_disconnect_drops_queued_work(tiny):
    app = create_app(tiny, settings(max_queue=8, max_inputs=8))
    batcher = app.state.batcher

    async def scenario():
        async with app.router.lifespan_context(app):
            gate = Gate(batcher)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                body = {"input": TEXTS, "task": "separation"}
                first = asyncio.create_task(c.post("/v1/embeddings", json=body))
                await asyncio.to_thread(gate.entered.wait, 5)  # first is on the worker now
                second = asyncio.create_task(c.post("/v1/embeddings", json={**body, "input": TEXTS * 2}))
                while batcher.queued_inputs < 8:
                    await asyncio.sleep(0.01)
                r = await c.post("/v1/embeddings", json=body)  # 8 queued + 4 > 8
                assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
                assert "busy" in r.json()["error"]["message"]
                second.cancel()  # the client gives up while queued
                with pytest.raises(asyncio.CancelledError):
                    await second
                assert batcher.queued_inputs == 0
                gate.open.set()
                assert (await first).status_code == 200
                ok = await c.post("/v1/embeddings", json=body)
                assert ok.status_code == 200
        return gate.rows

    rows = asyncio.run(scenario())
    assert rows == [4, 4]  # the cancelled request never reached a forward pass
    assert app.state.metrics.cancelled._value.get() == 1
    assert app.state.metrics.rejected._value.get() == 1


def test_concurrent_requests_share_forward_passes(tiny):
    app = create_app(tiny, settings(max_queue=64))
    batcher = app.state.batcher

    async def scenario():
        async with app.router.lifespan_context(app):
            gate = Gate(batcher)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                tasks = ["retrieval.query", "retrieval.passage", "separation", None]
                first = asyncio.create_task(c.post("/v1/embeddings", json={"input": TEXTS[:1]}))
                await asyncio.to_thread(gate.entered.wait, 5)
                rest = [asyncio.create_task(c.post("/v1/embeddings", json={"input": TEXTS, "task": t}))
                        for t in tasks]
                while batcher.queued_inputs < 16:
                    await asyncio.sleep(0.01)
                gate.open.set()
                await first
                return gate.rows, [await r for r in rest], tasks

    rows, responses, tasks = asyncio.run(scenario())
    assert rows == [1, 16]  # four requests with four different tasks: one step
    for r, t in zip(responses, tasks, strict=True):
        np.testing.assert_allclose(vectors(r), tiny.encode(TEXTS, task=t), atol=1e-5)


# --- one real uvicorn: raw HTTP, the openai client, a dropped connection, graceful shutdown ------------


@pytest.fixture(scope="module")
def server(tiny):
    app = create_app(tiny, settings(api_keys=[KEY]))
    srv, thread, port = start_server(app, wait_s=20)
    yield app, srv, thread, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(15)


def test_uvicorn_openai_client_round_trip(server, tiny):
    openai = pytest.importorskip("openai")
    _, _, _, url = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    # The client asks for base64 unless told otherwise and decodes it itself.
    res = client.embeddings.create(model=NAME, input=TEXTS, dimensions=32, extra_body={"task": "retrieval.query"})
    got = np.array([d.embedding for d in res.data])
    np.testing.assert_allclose(got, tiny.encode(TEXTS, task="retrieval.query", dimensions=32), atol=1e-5)
    assert res.usage.prompt_tokens == sum(tiny.count_tokens(TEXTS, task="retrieval.query"))
    res = client.embeddings.create(model=NAME, input="one text", encoding_format="float",
                                   extra_body={"task": "separation"})
    np.testing.assert_allclose(res.data[0].embedding, tiny.encode(["one text"], task="separation")[0], atol=1e-5)
    assert [m.id for m in client.models.list()] == [NAME, "jina-embeddings-v3"]
    with pytest.raises(openai.BadRequestError, match="unknown task"):
        client.embeddings.create(model=NAME, input="x", extra_body={"task": "nope"})
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).embeddings.create(model=NAME, input="x")


def test_uvicorn_raw_http_and_dropped_connection(server):
    app, _, _, url = server
    batcher, metrics = app.state.batcher, app.state.metrics
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(f"{url}/v1/embeddings", json={"input": TEXTS, "task": "separation"}, headers=auth)
    assert r.status_code == 200 and len(r.json()["data"]) == 4
    r = httpx.post(f"{url}/v1/embeddings", content=b"{oops", headers={**auth, "content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]

    gate = Gate(batcher)
    try:
        holder = threading.Thread(target=httpx.post, args=(f"{url}/v1/embeddings",),
                                  kwargs={"json": {"input": "hold", "task": "separation"}, "headers": auth})
        holder.start()
        assert gate.entered.wait(5)
        body = b'{"input": ["dropped", "text"], "task": "separation"}'
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as s:
            s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            deadline = time.monotonic() + 5
            while batcher.queued_inputs < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        deadline = time.monotonic() + 5  # socket closed: the queued job must go away
        while batcher.queued_inputs:
            assert time.monotonic() < deadline, "dropped connection left its job queued"
            time.sleep(0.01)
        assert metrics.cancelled._value.get() >= 1
    finally:
        gate.open.set()
        holder.join(10)
    assert gate.rows == [1]


def test_uvicorn_graceful_shutdown(tiny):
    app = create_app(tiny, settings())
    srv, thread, port = start_server(app)
    gate = Gate(app.state.batcher)
    result = {}

    def call():
        result["r"] = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": TEXTS, "task": "separation"},
                                 timeout=20)

    caller = threading.Thread(target=call)
    caller.start()
    assert gate.entered.wait(5)
    srv.should_exit = True  # what SIGTERM does
    time.sleep(0.3)
    gate.open.set()
    caller.join(15)
    thread.join(15)
    assert result["r"].status_code == 200 and len(result["r"].json()["data"]) == 4
    assert not thread.is_alive()
    assert app.state.batcher.closing


# --- command line --------------------------------------------------------------------------------


def test_cli_serves_the_bundled_model_by_default_and_says_when_it_is_missing(capsys, monkeypatch):
    import taskembed.checkpoint
    from taskembed.serve import cli as serve_cli
    from taskembed.serve import server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda app, host, port, **kw: seen.update(app=app, port=port, **kw))
    assert serve_main(["--port", "1", "--shutdown-timeout", "7"]) == 0
    assert seen["port"] == 1 and seen["shutdown_timeout_s"] == 7
    assert seen["app"].state.settings.model_names == ["taskembed-small"]

    def missing():
        raise taskembed.checkpoint.CheckpointError("the bundled default model is missing from X")

    monkeypatch.setattr(taskembed.checkpoint, "default_model_dir", missing)
    assert serve_cli.main([]) == 2
    assert "bundled default model is missing" in capsys.readouterr().err


def test_window_too_small_for_the_prefix_is_a_400(tiny):
    with TestClient(create_app(tiny, settings(late_window=16, late_overlap=2))) as c:
        r = post(c, {"input": TEXTS, "task": "retrieval.query"}, path="/v1/late_chunking")
        assert r.status_code == 400 and "window=16" in r.json()["error"]["message"]
        assert vectors(post(c, {"input": TEXTS, "task": "separation"}, path="/v1/late_chunking")).shape == (4, 64)
    with pytest.raises(ValueError, match="late_window"):
        create_app(tiny, settings(late_window=10**6))


def test_cli_int8_serves_a_quantised_model_and_refuses_it_on_gpu(tiny_dir, capsys, monkeypatch):
    from taskembed.serve import server

    seen = {}
    monkeypatch.setattr(server, "serve", lambda app, host, port, **kw: seen.update(app=app, **kw))
    assert serve_main(["--model", str(tiny_dir), "--int8"]) == 0
    assert seen["app"].state.embedder.quantized
    assert serve_main(["--model", str(tiny_dir), "--int8", "--device", "meta"]) == 2
    assert "int8 inference runs on CPU" in capsys.readouterr().err


def test_cli_bad_settings(tiny_dir, capsys):
    assert serve_main(["--model", str(tiny_dir), "--default-task", "nope"]) == 2
    assert "default task 'nope' unknown" in capsys.readouterr().err
    assert serve_main(["--model", str(tiny_dir / "missing")]) == 2


def test_every_route_but_health_is_documented_behind_the_key(tiny, tmp_path):
    from taskembed import index
    from taskembed.serve.search import register_search

    x = np.random.default_rng(0).standard_normal((20, 32)).astype(np.float32)
    path = index.build_index_from_arrays(tmp_path / "ix", x, kind="exact")
    app = create_app(tiny, settings(api_keys=[KEY]))
    register_search(app, index.VectorIndex.open(path))
    with TestClient(app) as c:
        spec = c.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    secured = {p for p, ops in spec["paths"].items() if all(op.get("security") for op in ops.values())}
    assert set(spec["paths"]) - secured == {"/health"}
    assert {"/v1/embeddings", "/v1/late_chunking", "/v1/models", "/metrics", "/v1/search"} <= secured
