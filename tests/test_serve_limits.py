"""Server hardening: limits checked before tokenising, every bad input a 4xx JSON error, auth before body."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from serve_helpers import Gate  # noqa: E402
from taskembed.serve import ServerSettings, create_app  # noqa: E402
from taskembed.serve.app import tokenize  # noqa: E402
from taskembed.serve.errors import ApiError  # noqa: E402
from taskembed.serve.limits import cut  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:no task given")

KEY = "hardening-test-key"
TEXT = "The cat sits on the warm windowsill and watches the birds in the garden."


def settings(**kw) -> ServerSettings:
    base = dict(model_names=["tiny"], max_length=64, max_inputs=8, max_queue=16, max_body_bytes=1 << 20,
                max_request_tokens=256, max_queue_tokens=1024, max_doc_tokens=400, late_window=32, late_overlap=4)
    base.update(kw)
    return ServerSettings(**base)


class Spy:
    """Counts calls of the tokenizer's encode (the expensive step the limits must precede)."""

    def __init__(self, tok, monkeypatch) -> None:
        self.calls, original = [], tok.encode

        def encode(texts, max_length, truncate=True):
            self.calls.append(sum(len(t) for t in texts))
            return original(texts, max_length, truncate)

        monkeypatch.setattr(tok, "encode", encode)


@pytest.fixture(scope="module")
def client(tiny):
    with TestClient(create_app(tiny, settings())) as c:
        yield c


def error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = json.loads(r.content)  # strict: no NaN, valid UTF-8
    assert body["detail"] == body["error"]["message"]
    return body["error"]


# --- limits before the expensive step ------------------------------------------------------------


def test_huge_text_is_refused_before_tokenising(client, tiny, monkeypatch):
    spy = Spy(tiny.tokenizer, monkeypatch)
    limit = 64 * tiny.tokenizer.max_piece_chars
    huge = "word " * 200_000  # 1 MB
    err = error(client.post("/v1/embeddings", json={"input": huge}), 400)
    assert err["code"] == "too_long" and f"more than the {limit} allowed per text" in err["message"]
    err = error(client.post("/v1/late_chunking", json={"input": [huge[:5000], "x"]}), 400)
    assert err["code"] == "too_long" and "characters" in err["message"]
    assert spy.calls == []  # neither request reached the tokenizer


def test_truncate_cuts_long_text_before_tokenising_and_matches_encode(client, tiny, monkeypatch):
    spy = Spy(tiny.tokenizer, monkeypatch)
    long = " ".join([TEXT] * 400)  # ~29k characters, far over the 64-token limit
    r = client.post("/v1/embeddings", json={"input": [long, TEXT], "task": "retrieval.query", "truncate": True})
    assert r.status_code == 200, r.text
    prefix = len(tiny.config.task_instructions["retrieval.query"])
    assert max(spy.calls) <= 64 * tiny.tokenizer.max_piece_chars + len(TEXT) + 2 * prefix
    got = np.array([d["embedding"] for d in r.json()["data"]])
    want = tiny.encode([long, TEXT], task="retrieval.query", truncate=True, max_length=64)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_cut_keeps_whole_words():
    assert cut("short", 10) == "short"
    text = "alpha beta gamma delta " * 10
    c = cut(text, 100)
    assert len(c) <= 100 and text.startswith(c) and text[len(c)] == " "
    assert cut("x" * 50, 20) == "x" * 20  # no whitespace: a plain cut


def test_request_token_and_character_limits_are_413(client, tiny, monkeypatch):
    # Five texts of ~60 tokens each fit the per-text limit but not 256 tokens per request.
    texts = [" ".join([TEXT] * 3)] * 5
    err = error(client.post("/v1/embeddings", json={"input": texts, "truncate": True}), 413)
    assert err["code"] == "request_too_large" and "256 allowed per request" in err["message"]
    spy = Spy(tiny.tokenizer, monkeypatch)
    per_text = 64 * tiny.tokenizer.max_piece_chars
    over = ["word " * (per_text // 5)] * 8  # each within the per-text bound, together over the request bound
    err = error(client.post("/v1/embeddings", json={"input": over}), 413)
    assert "characters of text" in err["message"]
    assert spy.calls == []


def test_tokenizer_error_keeps_no_frames_alive(tiny):
    async def go():
        with pytest.raises(ApiError) as info:
            await tokenize(tiny, ["word " * 200], 64, False, "input")
        return info.value

    e = asyncio.run(go())
    assert e.status == 400 and e.__context__ is None and e.__cause__ is None


def test_queue_in_tokens_is_503_with_an_estimate(tiny):
    import httpx

    app = create_app(tiny, settings(max_queue_tokens=300, max_request_tokens=200, max_batch_tokens=64,
                                    max_doc_tokens=300))
    batcher = app.state.batcher

    async def scenario():
        async with app.router.lifespan_context(app):
            gate = Gate(batcher)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                first = asyncio.create_task(c.post("/v1/embeddings", json={"input": TEXT}))
                await asyncio.to_thread(gate.entered.wait, 5)
                body = {"input": [" ".join([TEXT] * 3)] * 3, "truncate": True}  # ~190 tokens
                second = asyncio.create_task(c.post("/v1/embeddings", json=body))
                while batcher.queued_tokens < 150:
                    await asyncio.sleep(0.01)
                r = await c.post("/v1/embeddings", json=body)
                gate.open.set()
                return r, await first, await second

    r, first, second = asyncio.run(scenario())
    err = error(r, 503)
    assert "tokens waiting" in err["message"] and int(r.headers["retry-after"]) >= 1
    assert first.status_code == 200 and second.status_code == 200


def test_settings_must_nest(tiny):
    with pytest.raises(ValueError, match="max_request_tokens"):
        create_app(tiny, settings(max_request_tokens=32))
    with pytest.raises(ValueError, match="max_request_tokens"):
        create_app(tiny, settings(max_request_tokens=2048, max_queue_tokens=1024))


# --- bad input is a 4xx JSON error -------------------------------------------------------------------


@pytest.mark.parametrize("path,body", [
    ("/v1/embeddings", b'{"input": "a\\ud800b"}'),
    ("/v1/embeddings", b'{"input": ["ok", "\\udfff"]}'),
    ("/v1/late_chunking", b'{"input": ["ok", "x\\ud83d"]}'),
    ("/v1/embeddings", b'{"input": "a", "model": "\\ud800"}'),
])
def test_lone_surrogates_are_400(client, path, body):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    err = error(r, 404 if b"model" in body else 400)
    if b"model" not in body:
        assert err["code"] == "invalid_unicode" and "surrogate" in err["message"]
    assert client.get("/health").status_code == 200  # still serving


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_wrong_content_type_is_415(client, ctype):
    err = error(client.post("/v1/embeddings", content=b'{"input": "a"}', headers={"content-type": ctype}), 415)
    assert "Content-Type: application/json" in err["message"]


def test_json_content_types_are_accepted(client):
    for ctype in ("application/json; charset=utf-8", "application/vnd.api+json"):
        r = client.post("/v1/embeddings", content=b'{"input": "a"}', headers={"content-type": ctype})
        assert r.status_code == 200, (ctype, r.text)


@pytest.fixture(scope="module")
def search_client(tiny, tmp_path_factory):
    pytest.importorskip("usearch")
    from taskembed import index
    from taskembed.serve.search import register_search

    x = np.random.default_rng(0).standard_normal((50, 32)).astype(np.float32)
    path = index.build_index_from_arrays(tmp_path_factory.mktemp("ix") / "ix", x, kind="exact")
    app = create_app(tiny, settings())
    register_search(app, index.VectorIndex.open(path))
    with TestClient(app) as c:
        yield c


@pytest.mark.parametrize("body,message", [
    (b'{"vector": [[0.1, 0.2], [0.1]]}', "vector[0] has 2 values"),
    (b'{"vector": [[' + b",".join([b"0.1"] * 32) + b"], [0.1]]}", "vector[1] has 1 values"),
    (b'{"vector": [NaN' + b", 0.1" * 31 + b"]}", "NaN or infinity"),
    (b'{"vector": [Infinity' + b", 0.1" * 31 + b"]}", "NaN or infinity"),
    (b'{"vector": [1e300' + b", 0.1" * 31 + b"]}", "overflow"),
    (b'{"vector": []}', "vector"),
    (b'{"vector": [[]]}', "vector"),
    (b'{"query": "a\\ud800"}', "surrogate"),
    (b'{"query": ["ok", ""]}', "query[1] is an empty string"),
    (b'{"query": []}', "query is empty"),
    (b'{"query": "ok", "task": "nope"}', "unknown task 'nope'"),
])
def test_search_bad_vectors_and_queries_are_400(search_client, body, message):
    r = search_client.post("/v1/search", content=body, headers={"content-type": "application/json"})
    assert message in error(r, 400)["message"]


def test_search_long_query_is_cut_and_answered(search_client):
    r = search_client.post("/v1/search", json={"query": " ".join([TEXT] * 2000), "k": 3})
    assert r.status_code == 200, r.text
    body = json.loads(r.content)
    assert len(body["data"][0]["hits"]) == 3 and body["usage"]["total_tokens"] <= 64


# --- the key before the body -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(tiny):
    with TestClient(create_app(tiny, settings(api_keys=[KEY]))) as c:
        yield c


def test_auth_comes_before_the_body(keyed):
    ok = {"Authorization": f"Bearer {KEY}"}
    for body in (b"{not json", b"", b'{"input": "a\\ud800"}', b"x" * 5000):
        r = keyed.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
        assert error(r, 401)["code"] == "invalid_api_key"
    r = keyed.post("/v1/embeddings", content=b"x", headers={"content-type": "text/plain"})
    assert r.status_code == 401  # not 415: nothing about the request is judged before the key
    r = keyed.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json", **ok})
    assert "malformed JSON" in error(r, 400)["message"]


def test_docs_need_the_key_when_one_is_configured(keyed, client):
    ok = {"Authorization": f"Bearer {KEY}"}
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert keyed.get(path).status_code == 401, path
    assert keyed.get("/openapi.json", headers=ok).status_code == 200
    assert keyed.get("/docs", headers=ok).status_code == 200
    assert keyed.get("/health").status_code == 200
    assert client.get("/openapi.json").status_code == 200  # no key configured: open


def test_openapi_documents_errors_auth_and_metrics(keyed):
    spec = keyed.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).json()
    op = spec["paths"]["/v1/embeddings"]["post"]
    assert {"200", "400", "401", "413", "415", "503"} <= set(op["responses"]) and "422" not in op["responses"]
    assert op["responses"]["400"]["content"]["application/json"]["schema"]["required"] == ["error", "detail"]
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert op["security"] == [{"HTTPBearer": []}]
    assert "text/plain" in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert "application/json" not in spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


@pytest.mark.parametrize("texts, task, dimensions", [
    (["ok"], "nope", None),
    (["a", "b"], ["separation"], None),
    (["ok"], "separation", 12),
])
def test_one_validator_for_encode_and_every_route(search_client, tiny, texts, task, dimensions):
    """encode() and the routes answer the same bad request with the same words (inputs.py)."""
    with pytest.raises(ValueError) as e:
        tiny.encode(texts, task=task, dimensions=dimensions)
    said = str(e.value).replace("texts", "inputs").replace("per text", "per input")
    body = {"input": texts, "task": task, **({"dimensions": dimensions} if dimensions else {})}
    for route in ("/v1/embeddings", "/v1/late_chunking"):
        if route == "/v1/late_chunking" and isinstance(task, list):
            continue  # one document: one task
        assert error(search_client.post(route, json=body), 400)["message"] == said, route
    if isinstance(task, str) and dimensions is None:
        assert error(search_client.post("/v1/search", json={"query": texts, "task": task}), 400)["message"] == said
