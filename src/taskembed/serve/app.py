"""The HTTP API: OpenAI-compatible /v1/embeddings with the Jina extras, late chunking, models, health, metrics.

Every bad request gets a 4xx with a JSON body in OpenAI's error shape ({"error": {"message", "type",
"param", "code"}}, plus Jina's "detail" with the same message). Handlers only validate and tokenise; the
forward passes run in the batcher's worker thread, so the event loop stays free for other clients.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import late_chunking
from ..embedder import Embedder, quantize
from ..tokenizer import TokenizerError
from .batcher import Batcher, Job, QueueFull
from .metrics import Metrics

# Below this many characters a request is tokenised on the event loop: a thread hop costs more than the
# tokeniser (microseconds for a few sentences), and under load every hop waits for a time slice.
INLINE_TOKENIZE_CHARS = 16384
ROUTES = ("/v1/embeddings", "/v1/late_chunking", "/v1/models", "/health", "/metrics")


@dataclass
class ServerSettings:
    model_names: list[str] = field(default_factory=lambda: ["taskembed"])  # first one is reported
    api_keys: list[str] = field(default_factory=list)  # empty: no authentication
    max_batch_tokens: int = 16384
    max_wait_ms: float = 2.0
    max_queue: int = 4096  # inputs waiting, all requests together
    max_inputs: int = 2048  # per request
    max_length: int | None = None  # tokens per text; default: Embedder.default_max_length
    max_doc_tokens: int = 65536  # late chunking: tokens per document (longer ones use macro windows)
    late_window: int | None = None
    late_overlap: int | None = None
    late_separator: str = late_chunking.DEFAULT_SEPARATOR
    default_task: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    retry_after_s: int = 1


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def _error_type(status: int) -> str:
    return {401: "authentication_error", 404: "not_found_error", 413: "invalid_request_error",
            503: "server_overloaded"}.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": _error_type(status), "param": param, "code": code},
            "detail": message}
    return JSONResponse(body, status_code=status, headers=headers)


# --- request and response models (they also make the OpenAPI docs) ------------------------------------


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    input: str | list[str] = Field(description="A text or a list of texts (for late chunking: the chunks of "
                                               "one document, in order); Jina's [{\"text\": ...}] works too.")
    model: str | None = Field(None, description="Model id from /v1/models; omitted: the served model.")
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="OpenAI: float lists or base64 of little-endian float32 (or of the raw bytes of "
                          "embedding_type's integers).")
    dimensions: int | None = Field(None, description="Matryoshka output size (see /v1/models).")
    user: str | None = Field(None, description="Accepted for OpenAI compatibility; ignored.")
    task: str | list[str | None] | None = Field(
        None, description="Jina: task adapter for all inputs, or one per input (mixed tasks share forward "
                          "passes). Omitted: the server's default task (none: base weights).")
    late_chunking: bool = Field(False, description="Jina: the inputs are chunks of one document, embedded "
                                                   "as one sequence and pooled per chunk.")
    embedding_type: Literal["float", "base64", "int8", "uint8", "binary", "ubinary"] | None = Field(
        None, description="Jina: float, base64 (float32), int8, uint8, binary or ubinary (packed sign bits, "
                          "dimensions / 8 values).")
    normalized: bool = Field(True, description="Jina: L2-normalise (after the Matryoshka cut).")
    truncate: bool = Field(False, description="Jina: cut texts over the token limit instead of refusing them.")

    @field_validator("input", mode="before")
    @classmethod
    def _check_input(cls, v: Any) -> Any:
        if isinstance(v, str):
            return v
        if not isinstance(v, list):
            raise ValueError(f"input must be a string or a list of strings, got {_json_type(v)}")
        # Jina clients may send [{"text": ...}] (the multimodal models' format); text is all we take.
        v = [x["text"] if isinstance(x, dict) and set(x) == {"text"} else x for x in v]
        for i, x in enumerate(v):
            if not isinstance(x, str):
                hint = " (token-id input is not supported; send text)" if isinstance(x, int | list) else ""
                raise ValueError(f"input[{i}] must be a string, got {_json_type(x)}{hint}")
        return v

    @field_validator("task", mode="before")
    @classmethod
    def _check_task(cls, v: Any) -> Any:
        if v is None or isinstance(v, str):
            return v
        if not isinstance(v, list) or not all(x is None or isinstance(x, str) for x in v):
            raise ValueError("task must be a task name, a list of task names (one per input), or null")
        return v


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[int] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    e = errors[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    kind = e.get("type", "")
    if kind == "json_invalid":
        return f"malformed JSON body: {e.get('ctx', {}).get('error', e.get('msg'))}", None
    if kind == "missing" and not loc:
        return "missing request body: send a JSON object with an `input` field", None
    param = loc[0] if loc else None
    where = ".".join(loc) or "body"
    if kind == "extra_forbidden":
        allowed = ", ".join(EmbeddingRequest.model_fields)
        return f"unknown field {where!r}; allowed fields: {allowed}", param
    if kind == "missing":
        return f"missing required field {where!r}", param
    if kind in ("model_type", "model_attributes_type", "dict_type") and not loc:
        return "the request body must be a JSON object", None
    msg = e.get("msg", "invalid value").removeprefix("Value error, ")
    if kind == "value_error":  # our validators' messages name the field already
        return msg, param
    if "input" in e:
        msg += f" (got {_json_type(e['input'])})"
    return f"{where}: {msg}", param


# --- the app ---------------------------------------------------------------------------------------


def submit(batcher, job, retry_after_s: int) -> None:
    """Queue a job, or answer 503 with Retry-After when the queue is full (backpressure)."""
    try:
        batcher.submit(job)
    except QueueFull as e:
        raise ApiError(503, f"server busy: {e}; retry shortly", code="overloaded",
                       headers={"Retry-After": str(retry_after_s)}) from None


def create_app(emb: Embedder, settings: ServerSettings | None = None) -> FastAPI:
    """The ASGI app serving `emb`. The batcher starts and stops with the app's lifespan."""
    s = settings or ServerSettings()
    max_length = s.max_length or emb.default_max_length
    if max_length > emb.config.max_position_embeddings:
        raise ValueError(f"max_length={max_length} exceeds the model's context {emb.config.max_position_embeddings}")
    if s.max_inputs > s.max_queue:
        raise ValueError(f"max_inputs={s.max_inputs} must not exceed max_queue={s.max_queue}")
    if s.late_window is not None and not 4 <= s.late_window <= emb.config.max_position_embeddings:
        raise ValueError(f"late_window={s.late_window} must be in 4..{emb.config.max_position_embeddings}")
    if s.late_overlap is not None and not 0 <= s.late_overlap < (s.late_window or max_length) // 2:
        raise ValueError(f"late_overlap={s.late_overlap} must be >= 0 and under half the window")
    if s.default_task is not None and s.default_task not in emb.tasks:
        raise ValueError(f"default task {s.default_task!r} unknown; allowed: {', '.join(emb.tasks)}")
    metrics = Metrics()
    batcher = Batcher(emb, s.max_batch_tokens, s.max_wait_ms, s.max_queue, metrics, s.late_window, s.late_overlap)
    keys = [k.encode() for k in s.api_keys]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.close()

    app = FastAPI(
        title="taskembed", version="0.1.0", lifespan=lifespan,
        description="OpenAI- and Jina-compatible embeddings with per-input task adapters and late chunking.",
    )
    app.state.batcher, app.state.metrics, app.state.settings, app.state.embedder = batcher, metrics, s, emb
    app.add_middleware(_Guard, max_body_bytes=s.max_body_bytes, metrics=metrics)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = _validation_message(exc)
        return error_response(400, msg, param, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = str(exc.detail) if exc.status_code != 404 else f"no route {request.method} {request.url.path}"
        return error_response(exc.status_code, msg, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(exc).__name__}", code="internal_error")

    async def auth(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token_b = token.strip().encode()
        ok = False
        for k in keys:  # every key compared, in constant time, so timing reveals nothing
            ok |= hmac.compare_digest(token_b, k)
        if scheme.lower() != "bearer" or not ok:
            raise ApiError(401, "missing or invalid API key: send `Authorization: Bearer <key>`",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    protected = [Depends(auth)]

    # --- embeddings ---

    async def handle(req: EmbeddingRequest, request: Request, late: bool) -> Response:
        if req.model is not None and req.model not in s.model_names:
            raise ApiError(404, f"model {req.model!r} not found; this server has: {', '.join(s.model_names)}",
                           "model", "model_not_found")
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts:
            raise ApiError(400, "input is empty: give at least one string", "input")
        if len(texts) > s.max_inputs:
            raise ApiError(400, f"too many inputs: {len(texts)} > {s.max_inputs} per request", "input")
        empty = next((i for i, t in enumerate(texts) if not t), None)
        if empty is not None:
            raise ApiError(400, f"input[{empty}] is an empty string", "input")
        task = req.task if "task" in req.model_fields_set else s.default_task
        tasks = task if isinstance(task, list) else [task] * len(texts)
        if len(tasks) != len(texts):
            raise ApiError(400, f"got {len(tasks)} tasks for {len(texts)} inputs; give one task per input", "task")
        bad = next((t for t in tasks if t is not None and t not in emb.tasks), None)
        if bad is not None:
            raise ApiError(400, f"unknown task {bad!r}; allowed: {', '.join(emb.tasks)}", "task", "invalid_task")
        full = emb.config.truncate_dim or emb.config.hidden_size
        dim = full if req.dimensions is None else req.dimensions
        if dim not in emb.dimensions:
            raise ApiError(400, f"dimensions={dim} not allowed; allowed: {emb.dimensions}", "dimensions")
        etype = req.embedding_type or "float"
        precision = {"float": "float32", "base64": "float32"}.get(etype, etype)
        b64 = etype == "base64" or req.encoding_format == "base64"
        if precision in ("int8", "uint8") and not req.normalized:
            raise ApiError(400, f"embedding_type={etype} uses a fixed scale for unit vectors; needs normalized=true",
                           "normalized")
        late = late or req.late_chunking
        if late and len(set(tasks)) > 1:
            raise ApiError(400, "late chunking embeds one document: give one task for all its chunks", "task")

        small = sum(len(t) for t in texts) <= INLINE_TOKENIZE_CHARS

        async def offload(fn, *a):
            return fn(*a) if small else await run_in_threadpool(fn, *a)

        batcher.arriving += 1
        try:
            if late:
                try:
                    plan = await offload(late_chunking.plan, emb, texts, tasks[0], s.late_separator)
                except ValueError as e:
                    raise ApiError(400, str(e), "input") from None
                if plan.num_tokens > s.max_doc_tokens:
                    raise ApiError(400, f"the document has {plan.num_tokens} tokens, more than the "
                                        f"{s.max_doc_tokens} allowed for late chunking", "input", "too_long")
                job, n_tokens = Job(plan=plan), plan.num_tokens
            else:
                prefixed, task_ids = emb.prepare(texts, tasks)
                try:
                    enc = await offload(emb.tokenizer.encode, prefixed, max_length, req.truncate)
                except TokenizerError as e:
                    raise ApiError(400, f"{e} (the limit counts the task prefix and 2 special tokens; send "
                                        "truncate=true to cut)", "input", "too_long") from None
                job = Job(ids=enc.ids, task_ids=task_ids)
                n_tokens = sum(len(x) for x in enc.ids)
            submit(batcher, job, s.retry_after_s)
        finally:
            batcher.arriving -= 1

        try:
            vectors = await _wait_or_disconnect(job, request, batcher)
        except ValueError as e:  # e.g. a late-chunking window too small for this task's prefix
            raise ApiError(400, str(e), "input") from None
        if vectors is None:  # the client is gone; nobody reads this
            return Response(status_code=499)
        out = vectors[:, :dim]
        if req.normalized:
            out = torch.nn.functional.normalize(out, p=2, dim=-1)
        arr = quantize(out.numpy(), precision)
        metrics.inputs.inc(len(texts))
        metrics.tokens.inc(n_tokens)
        return _embedding_response(arr, b64, s.model_names[0], n_tokens)

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, dependencies=protected, tags=["embeddings"],
              summary="Embed texts (OpenAI request + Jina extras)")
    async def embeddings(req: EmbeddingRequest, request: Request) -> Response:
        return await handle(req, request, late=False)

    @app.post("/v1/late_chunking", response_model=EmbeddingResponse, dependencies=protected,
              tags=["embeddings"], summary="Late chunking: the inputs are the chunks of one document")
    async def late(req: EmbeddingRequest, request: Request) -> Response:
        return await handle(req, request, late=True)

    # --- models, health, metrics ---

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "taskembed",
                "dimensions": emb.dimensions, "tasks": emb.tasks, "default_task": s.default_task,
                "max_tokens": max_length, "late_chunking_max_tokens": s.max_doc_tokens}

    @app.get("/v1/models", dependencies=protected, tags=["models"], summary="The served model")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n) for n in s.model_names]}

    @app.get("/v1/models/{model_id}", dependencies=protected, tags=["models"], summary="One model")
    async def model(model_id: str) -> dict[str, Any]:
        if model_id not in s.model_names:
            raise ApiError(404, f"model {model_id!r} not found", "model", "model_not_found")
        return model_card(model_id)

    @app.get("/health", tags=["ops"], summary="Liveness and queue state (no key needed)")
    async def health() -> JSONResponse:
        body = {"status": "shutting_down" if batcher.closing else "ok", "model": s.model_names[0],
                "queued_inputs": batcher.queued_inputs}
        return JSONResponse(body, status_code=503 if batcher.closing else 200)

    @app.get("/metrics", dependencies=protected, tags=["ops"], summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _embedding_response(arr: np.ndarray, b64: bool, model: str, n_tokens: int) -> Response:
    # Built by hand: pydantic + jsonable_encoder take longer than the forward pass for large float lists.
    if b64:
        le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        items = [base64.b64encode(v.tobytes()).decode("ascii") for v in le]
    else:
        items = arr.tolist()
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(items)]
    body = {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
    return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")


async def _wait_or_disconnect(job: Job, request: Request, batcher: Batcher) -> torch.Tensor | None:
    """The job's vectors, or None when the client disconnected first (its queued job is dropped)."""

    async def disconnected() -> None:
        while True:
            msg = await request.receive()
            if msg["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({job.future, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        batcher.cancel(job)
        raise
    finally:
        watcher.cancel()
    if job.future in done:
        return job.future.result()
    batcher.cancel(job)
    return None


class _Guard:
    """ASGI middleware: body-size limit (413 before parsing) and per-route request metrics."""

    def __init__(self, app, max_body_bytes: int, metrics: Metrics) -> None:
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = path if path in ROUTES else ("/v1/models" if path.startswith("/v1/models/") else "other")
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapped(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            declared = dict(scope.get("headers") or []).get(b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                return await self._too_large(scope, receive, send_wrapped)
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                chunks, size = [], 0
                while True:
                    msg = await receive()
                    if msg["type"] == "http.disconnect":
                        return
                    chunks.append(msg.get("body", b""))
                    size += len(chunks[-1])
                    if size > self.max_body_bytes:
                        return await self._too_large(scope, receive, send_wrapped)
                    if not msg.get("more_body", False):
                        break
                body, replayed = b"".join(chunks), False

                async def replay():
                    nonlocal replayed
                    if not replayed:
                        replayed = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                return await self.app(scope, replay, send_wrapped)
            return await self.app(scope, receive, send_wrapped)
        finally:
            self.metrics.requests.labels(route, str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

    async def _too_large(self, scope, receive, send) -> None:
        resp = error_response(413, f"request body too large: the limit is {self.max_body_bytes} bytes",
                              code="body_too_large")
        await resp(scope, receive, send)

