"""Server runtime: pass-by-pass scheduling, cancellation mid-request, draining shutdown, slow clients, logs."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")

from serve_helpers import Gate, start_server  # noqa: E402
from taskembed.serve import ServerSettings, create_app  # noqa: E402
from taskembed.serve import server as srv_mod  # noqa: E402
from taskembed.serve.batcher import STARVE_PASSES, Job  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:no task given")

TEXT = "The cat sits on the warm windowsill and watches the birds in the garden."
LONG = " ".join([TEXT] * 4)  # cut to 64 tokens with truncate


def settings(**kw) -> ServerSettings:
    # One long text fills a pass: a request of 8 of them needs 8 passes.
    base = dict(model_names=["tiny"], max_length=64, max_batch_tokens=64, max_inputs=8, max_queue=64,
                max_request_tokens=1024, max_queue_tokens=4096, max_doc_tokens=400, late_window=32, late_overlap=4)
    base.update(kw)
    return ServerSettings(**base)


class Recorder:
    """A slow model: every pass waits for a permit from the test, and its rows are recorded."""

    def __init__(self, batcher, first_only: bool = False) -> None:
        self.passes: list[list[list[int]]] = []
        self.permits = threading.Semaphore(0)
        self.entered = threading.Event()
        self.first_only = first_only
        original = batcher._forward

        def forward(ids, task_ids):
            self.entered.set()
            if not self.first_only or not self.passes:
                assert self.permits.acquire(timeout=20), "the test never released this pass"
            self.passes.append([list(x) for x in ids])
            return original(ids, task_ids)

        batcher._forward = forward


def test_short_request_waits_for_one_pass_not_for_a_long_one(tiny):
    app = create_app(tiny, settings())
    batcher = app.state.batcher

    async def scenario():
        async with app.router.lifespan_context(app):
            rec = Recorder(batcher, first_only=True)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                long = asyncio.create_task(c.post("/v1/embeddings", json={"input": [LONG] * 8, "truncate": True,
                                                                           "task": "separation"}))
                await asyncio.to_thread(rec.entered.wait, 10)  # pass 1 of 8 is running
                short = asyncio.create_task(c.post("/v1/embeddings", json={"input": "hi", "task": "separation"}))
                while batcher.queued_inputs < 8:  # 7 long rows + the short one
                    await asyncio.sleep(0.01)
                rec.permits.release()
                return rec, await long, await short

    rec, long, short = asyncio.run(scenario())
    assert long.status_code == 200 and short.status_code == 200
    short_ids = tiny.tokenizer.encode(["hi"], 64).ids[0]
    at = next(i for i, p in enumerate(rec.passes) if short_ids in p)
    assert at == 1  # right after the pass that was running when it came
    assert len(rec.passes) == 9 and sum(len(p) for p in rec.passes) == 9
    want = tiny.encode([LONG] * 8, task="separation", truncate=True, max_length=64)
    np.testing.assert_allclose(np.array([d["embedding"] for d in long.json()["data"]]), want, atol=1e-5)


def test_long_request_is_not_starved(tiny):
    app = create_app(tiny, settings())
    batcher = app.state.batcher
    rows = tiny.tokenizer.encode([LONG, "a b c d e f g h i j k l m n o p"], 64, True).ids

    async def scenario():
        batcher._wakeup = asyncio.Event()
        long = batcher.submit(Job(ids=[rows[0]], task_ids=[-1]))
        for step in range(STARVE_PASSES + 2):
            for _ in range(4):  # a steady stream of short requests, always enough to fill a pass
                batcher.submit(Job(ids=[rows[1]], task_ids=[-1]))
            _, chosen = batcher._plan()
            if any(j is long for j, _ in chosen):
                return step
        return None

    assert asyncio.run(scenario()) == STARVE_PASSES


def test_disconnect_stops_a_running_request_at_the_next_pass(tiny):
    app = create_app(tiny, settings())
    batcher = app.state.batcher

    async def scenario():
        async with app.router.lifespan_context(app):
            rec = Recorder(batcher, first_only=True)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                body = {"input": [LONG] * 8, "truncate": True, "task": "separation"}
                doomed = asyncio.create_task(c.post("/v1/embeddings", json=body))
                await asyncio.to_thread(rec.entered.wait, 10)
                doomed.cancel()  # the client goes away during pass 1 of 8
                with pytest.raises(asyncio.CancelledError):
                    await doomed
                assert batcher.queued_inputs == 0 and batcher.queued_tokens == 0
                rec.permits.release()
                after = await c.post("/v1/embeddings", json={"input": "next", "task": "separation"})
                return rec, after

    rec, after = asyncio.run(scenario())
    assert after.status_code == 200
    assert [len(p) for p in rec.passes] == [1, 1]  # the pass in flight, then the next request: nothing else
    assert app.state.metrics.cancelled._value.get() == 1


def test_shutdown_drains_then_answers_503_json(tiny):
    app = create_app(tiny, settings())
    srv, thread, port = start_server(app, shutdown_timeout_s=2)
    gate = Gate(app.state.batcher)
    results: dict[str, httpx.Response] = {}

    def call(name, body):
        results[name] = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json=body, timeout=30)

    callers = [threading.Thread(target=call, args=("running", {"input": "held", "task": "separation"})),
               threading.Thread(target=call, args=("queued", {"input": [LONG] * 2, "truncate": True}))]
    callers[0].start()
    assert gate.entered.wait(10)
    callers[1].start()
    deadline = time.monotonic() + 10
    while app.state.batcher.queued_inputs < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    srv.should_exit = True  # what SIGTERM does
    deadline = time.monotonic() + 10
    while not app.state.batcher.closing:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    async def health():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.get("/health")

    h = asyncio.run(health())
    assert h.status_code == 503 and h.json()["status"] == "draining"
    for t in callers:  # the worker is still held: both must be answered by the shutdown timeout
        t.join(20)
    gate.open.set()
    thread.join(20)
    assert not thread.is_alive()
    for name in ("running", "queued"):
        r = results[name]
        assert r.status_code == 503, (name, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"]["code"] == "shutting_down"


def test_slow_headers_are_cut_off(tiny):
    app = create_app(tiny, settings())
    srv, thread, port = start_server(app, read_timeout_s=1)
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            s.settimeout(20)
            start = time.monotonic()
            assert s.recv(100) == b""  # closed by the server, not by our timeout
            assert time.monotonic() - start < 15
        with socket.create_connection(("127.0.0.1", port)) as s:  # a prompt client is served as before
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(20)
            assert s.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        srv.should_exit = True
        thread.join(20)


def test_slow_body_is_408(tiny):
    from taskembed.serve.guard import Guard

    sent = []

    async def app(scope, receive, send):  # never reached
        raise AssertionError

    async def receive():
        await asyncio.sleep(30)

    async def send(msg):
        sent.append(msg)

    from taskembed.serve.metrics import Metrics

    guard = Guard(app, keys=[], max_body_bytes=100, read_timeout_s=0.2, metrics=Metrics())
    scope = {"type": "http", "method": "POST", "path": "/v1/embeddings", "headers": []}
    asyncio.run(guard(scope, receive, send))
    assert sent[0]["status"] == 408
    assert "did not arrive" in json.loads(sent[1]["body"])["error"]["message"]


def test_access_log_drops_query_strings():
    srv_mod.redact_access_log()
    logger = logging.getLogger("uvicorn.access")
    record = logger.makeRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", "/v1/models?api_key=SECRET&x=1", "1.1", 401), None)
    for f in logger.filters:
        f.filter(record)
    assert "SECRET" not in record.getMessage() and "/v1/models?<redacted>" in record.getMessage()
    assert sum(isinstance(f, srv_mod.RedactQuery) for f in logger.filters) == 1


@pytest.fixture
def plans(tiny):
    """A batcher whose passes the test plans by hand (no worker): ids are arbitrary, only lengths count."""

    def make(**kw):
        batcher = create_app(tiny, settings(**kw)).state.batcher
        batcher._wakeup = asyncio.Event()
        return batcher

    return make


def test_pass_with_quick_work_keeps_longer_rows_out(plans):
    batcher = plans()  # 64 tokens a pass; quick: at most 16 tokens left
    assert batcher.quick_tokens == 16

    async def scenario():
        medium = batcher.submit(Job(ids=[[5] * 40], task_ids=[-1]))
        quick = batcher.submit(Job(ids=[[5] * 4] * 3, task_ids=[-1]))
        first = batcher._plan()[1]
        second = batcher._plan()[1]
        many = [batcher.submit(Job(ids=[[5] * 6], task_ids=[-1])) for _ in range(10)]
        third = batcher._plan()[1]
        return medium, quick, first, second, many, third

    medium, quick, first, second, many, third = asyncio.run(scenario())
    # 12 + 40 tokens would fit the pass, but the quick request's pass stays short.
    assert {j for j, _ in first} == {quick} and len(first) == 3
    assert [j for j, _ in second] == [medium]
    # Quick requests together still fill a whole pass (60 of 64 tokens).
    assert [j for j, _ in third] == many


def test_queue_of_long_requests_does_not_push_short_ones_back(plans):
    batcher = plans()

    async def scenario():
        longs = [batcher.submit(Job(ids=[[5] * 64], task_ids=[-1])) for _ in range(8)]
        ran = [batcher._plan()[1] for _ in range(STARVE_PASSES + 2)]
        short = batcher.submit(Job(ids=[[5] * 3], task_ids=[-1]))
        after = batcher._plan()[1]
        return longs, ran, short, after

    longs, ran, short, after = asyncio.run(scenario())
    # Equal long requests run in arrival order: none overtakes another, so none counts as starved ...
    assert [p[0][0] for p in ran] == longs[:STARVE_PASSES + 2] and all(len(p) == 1 for p in ran)
    # ... and a short request that comes now goes in the very next pass, alone.
    assert [j for j, _ in after] == [short]


def test_oldest_request_gets_a_pass_between_quick_ones(plans):
    batcher = plans()

    async def scenario():
        long = batcher.submit(Job(ids=[[5] * 64], task_ids=[-1]))
        kinds = []
        for _ in range(2 * (STARVE_PASSES + 1)):
            batcher.submit(Job(ids=[[5] * 3], task_ids=[-1]))  # quick work always waiting
            chosen = batcher._plan()[1]
            kinds.append("long" if any(j is long for j, _ in chosen) else "quick")
            if kinds[-1] == "long":
                long.pending = [0]  # a request of many rows: it needs pass after pass
        return kinds

    kinds = asyncio.run(scenario())
    every = ["quick"] * STARVE_PASSES + ["long"]
    assert kinds == every * 2


def test_heap_is_trimmed_once_the_queue_is_idle(tiny):
    app = create_app(tiny, settings())
    batcher = app.state.batcher
    trims: list[int] = []
    trimmed = threading.Event()

    async def scenario():
        async with app.router.lifespan_context(app):
            rec = Recorder(batcher)
            batcher.idle_trim_s = 0.05

            def trim():
                trims.append(len(rec.passes))
                trimmed.set()

            batcher.trim = trim
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                first = asyncio.create_task(c.post("/v1/embeddings", json={"input": TEXT}))
                await asyncio.to_thread(rec.entered.wait, 10)
                await asyncio.sleep(0.3)  # several idle waits long: but a pass is running
                during = list(trims)
                rec.permits.release()
                assert (await first).status_code == 200
                assert await asyncio.to_thread(trimmed.wait, 10)
                await asyncio.sleep(0.3)
                once = list(trims)
                trimmed.clear()
                rec.permits.release()
                assert (await c.post("/v1/embeddings", json={"input": TEXT})).status_code == 200
                assert await asyncio.to_thread(trimmed.wait, 10)
                return during, once, list(trims)

    during, once, after = asyncio.run(scenario())
    assert during == [] and once == [1] and after == [1, 2]


def test_large_texts_are_tokenised_one_at_a_time(tiny, monkeypatch):
    from taskembed.serve import app as app_mod

    monkeypatch.setattr(app_mod, "INLINE_TOKENIZE_CHARS", 0)  # every request goes to the tokenising thread
    state = {"now": 0, "most": 0, "calls": 0}
    lock = threading.Lock()
    original = tiny.tokenizer.encode

    def encode(*args, **kw):
        with lock:
            state["now"] += 1
            state["calls"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)  # long enough for concurrent calls to overlap, were they allowed
        try:
            return original(*args, **kw)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(tiny.tokenizer, "encode", encode)
    app = create_app(tiny, settings())

    async def scenario():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                return await asyncio.gather(*(c.post("/v1/embeddings", json={"input": f"{TEXT} {i}"})
                                              for i in range(4)))

    answers = asyncio.run(scenario())
    assert [a.status_code for a in answers] == [200] * 4
    assert state["calls"] == 4 and state["most"] == 1


def test_quick_request_runs_between_the_layers_of_a_long_pass(tiny):
    app = create_app(tiny, settings())
    batcher = app.state.batcher
    events: list[tuple[str, int]] = []
    hold, entered = threading.Event(), threading.Event()

    async def scenario():
        async with app.router.lifespan_context(app):
            original = batcher._forward

            def forward(ids, task_ids):
                events.append(("start", len(ids[0])))
                if len(events) == 1:  # the long pass: hold it until the short request is queued
                    entered.set()
                    assert hold.wait(20)
                out = original(ids, task_ids)
                events.append(("end", len(ids[0])))
                return out

            batcher._forward = forward
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                long = asyncio.create_task(c.post("/v1/embeddings", json={"input": LONG, "truncate": True,
                                                                           "task": "separation"}))
                await asyncio.to_thread(entered.wait, 10)
                short = asyncio.create_task(c.post("/v1/embeddings", json={"input": "hi", "task": "separation"}))
                while batcher.queued_inputs < 1:
                    await asyncio.sleep(0.01)
                hold.set()
                return await long, await short

    long, short = asyncio.run(scenario())
    assert long.status_code == 200 and short.status_code == 200
    assert [e for e, _ in events] == ["start", "start", "end", "end"]  # the short pass inside the long one
    assert events[0][1] == 64 and events[1][1] < 64
    assert app.state.batcher.passes == 2
    for answer, text, kw in ((long, LONG, {"truncate": True, "max_length": 64}), (short, "hi", {})):
        want = tiny.encode([text], task="separation", **kw)
        np.testing.assert_allclose(np.array([answer.json()["data"][0]["embedding"]]), want, atol=1e-5)


def test_queue_full_of_long_requests_still_takes_quick_ones(plans):
    from taskembed.serve.batcher import QueueFull

    batcher = plans(max_queue_tokens=1024)  # 16 long requests of 64 tokens; quick: at most 16 tokens

    async def scenario():
        for _ in range(16):
            batcher.submit(Job(ids=[[5] * 64], task_ids=[-1]))
        with pytest.raises(QueueFull):
            batcher.submit(Job(ids=[[5] * 64], task_ids=[-1]))
        with pytest.raises(QueueFull):
            batcher.submit(Job(ids=[[5] * 17], task_ids=[-1]))  # not quick
        quick = [batcher.submit(Job(ids=[[5] * 4], task_ids=[-1])) for _ in range(16)]  # one pass: 64 tokens
        with pytest.raises(QueueFull):
            batcher.submit(Job(ids=[[5] * 4], task_ids=[-1]))
        return quick

    assert len(asyncio.run(scenario())) == 16
