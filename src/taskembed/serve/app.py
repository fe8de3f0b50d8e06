"""The HTTP API: OpenAI-compatible /v1/embeddings with the Jina extras, late chunking, models, health, metrics.

Every bad request gets a 4xx with a JSON body in OpenAI's error shape ({"error": {"message", "type",
"param", "code"}}, plus Jina's "detail" with the same message). Handlers only validate and tokenise; the
forward passes run in the batcher's worker thread, so the event loop stays free for other clients.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from fastapi import APIRouter, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import late_chunking
from ..embedder import Embedder, quantize
from ..inputs import InputError, check_tasks, check_texts
from ..tokenizer import TokenizerError
from .batcher import Aborted, Batcher, Job, QueueFull
from .errors import ERROR_SCHEMA, ApiError, error_response
from .guard import Guard
from .limits import check_chars, check_unicode
from .metrics import Metrics

# Below this many characters a request is tokenised on the event loop: a thread hop costs more than the
# tokeniser (microseconds for a few sentences), and under load every hop waits for a time slice.
INLINE_TOKENIZE_CHARS = 16384
# Large texts are tokenised one at a time: concurrent tokenisers buy no throughput on a few cores, and each
# one takes CPU time and the GIL from the forward pass and the event loop that short requests wait on.
TOKENIZE_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskembed-tokenize")
__all__ = ["ApiError", "ServerSettings", "create_app", "error_response"]


@dataclass
class ServerSettings:
    model_names: list[str] = field(default_factory=lambda: ["taskembed"])  # first one is reported
    api_keys: list[str] = field(default_factory=list)  # empty: no authentication
    # Tokens per forward pass. On CPU one 8192-token text saturates the matrix products; a larger pass only
    # lengthens the wait of requests that arrive while it runs.
    max_batch_tokens: int = 8192
    max_wait_ms: float = 2.0
    max_queue: int = 4096  # inputs waiting, all requests together
    max_queue_tokens: int = 262144  # tokens waiting, all requests together
    max_inputs: int = 2048  # per request
    max_request_tokens: int = 65536  # per request (texts after truncation, prefixes and specials included)
    max_length: int | None = None  # tokens per text; default: Embedder.default_max_length
    max_doc_tokens: int = 65536  # late chunking: tokens per document (longer ones use macro windows)
    late_window: int | None = None
    late_overlap: int | None = None
    late_separator: str = late_chunking.DEFAULT_SEPARATOR
    default_task: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    read_timeout_s: float = 30.0  # the whole request body must arrive within this


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


def _error_doc(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


# Documented on every protected route; POST routes add the body errors.
ERROR_DOCS = {401: _error_doc("Missing or invalid API key (only when the server has keys)")}
BODY_ERROR_DOCS = {
    400: _error_doc("Bad request: malformed JSON, wrong types, unknown task, text too long, ..."),
    404: _error_doc("Unknown model"),
    408: _error_doc("The request body did not arrive in time"),
    413: _error_doc("Body, characters or tokens over the server's per-request limits"),
    415: _error_doc("Not a JSON body"),
    503: _error_doc("Queue full (see Retry-After) or shutting down"),
    **ERROR_DOCS,
}
bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <key>` when the server has API keys")


def keyed_router(settings: ServerSettings) -> APIRouter:
    """A router for routes behind the key. The key is checked in the middleware (serve/guard.py), before the
    body is read; the router's dependency documents the scheme in the OpenAPI spec."""
    return APIRouter(dependencies=[Security(bearer)] if settings.api_keys else [])


def submit(batcher: Batcher, job: Job) -> None:
    """Queue a job, or answer 503 with Retry-After (an estimate from the queue) when it has no room."""
    try:
        batcher.submit(job)
    except QueueFull as e:
        if batcher.closing:
            raise ApiError(503, f"{e}; retry on another instance", code="shutting_down",
                           headers={"Connection": "close"}) from None
        raise ApiError(503, f"server busy: {e}; retry shortly", code="overloaded",
                       headers={"Retry-After": str(batcher.retry_after(job.tokens))}) from None


async def offload(fn, *args):
    """`fn(*args)` on the tokenising thread."""
    return await asyncio.get_running_loop().run_in_executor(TOKENIZE_POOL, fn, *args)


def text_job(emb: Embedder, ids: list[list[int]], task_ids: list[int], n_tokens: int, max_request_tokens: int,
             param: str) -> tuple[Job, Callable[[torch.Tensor], torch.Tensor]]:
    """The job for tokenised texts, after the per-request token cap, and the function that pools its answer
    back to one vector per text (texts longer than a learned position table run as windows)."""
    if n_tokens > max_request_tokens:
        raise ApiError(413, f"the request has {n_tokens} tokens, more than the {max_request_tokens} allowed per "
                            "request; split it", param, "request_too_large")
    seqs, owner, weight = emb.split_windows(ids, task_ids)
    job = Job(ids=seqs, task_ids=[task_ids[i] for i in owner])
    return job, lambda vectors: emb.pool_windows(vectors, owner, weight, len(ids))


async def tokenize(emb: Embedder, texts: list[str], max_length: int, truncate: bool, param: str,
                   hint: str = "") -> tuple[list[list[int]], int]:
    """Token ids (off the event loop when large) and their total; a too-long text is a 400.

    The ApiError is raised outside the `except`: chained to the tokenizer's error it would keep that
    frame, and with it every encoding of the request, alive as long as the answer.
    """
    big = sum(len(t) for t in texts) > INLINE_TOKENIZE_CHARS
    try:
        if big:
            enc = await offload(emb.tokenizer.encode, texts, max_length, truncate)
        else:
            enc = emb.tokenizer.encode(texts, max_length, truncate)
    except TokenizerError as e:
        message = f"{e}{hint}"
    else:
        return enc.ids, sum(len(x) for x in enc.ids)
    raise ApiError(400, message, param, "too_long")


async def wait_for_job(job: Job, request: Request, batcher: Batcher) -> torch.Tensor | None:
    """The job's vectors, or None when the client disconnected first (its remaining work is dropped)."""

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
    if job.future not in done:
        batcher.cancel(job)
        return None
    error = job.future.exception()
    if isinstance(error, Aborted):
        raise ApiError(503, f"{error}: the request did not finish within the shutdown timeout; retry",
                       code="shutting_down", headers={"Connection": "close"})
    if isinstance(error, ValueError):  # e.g. a late-chunking window too small for this task's prefix
        raise ApiError(400, str(error), "input")
    return job.future.result()


def create_app(emb: Embedder, settings: ServerSettings | None = None) -> FastAPI:
    """The ASGI app serving `emb`. The batcher starts and stops with the app's lifespan."""
    s = settings or ServerSettings()
    max_length = s.max_length or emb.default_max_length
    if emb.config.position_embedding_type == "rotary" and max_length > emb.config.max_position_embeddings:
        raise ValueError(f"max_length={max_length} exceeds the model's context {emb.config.max_position_embeddings}")
    if s.max_inputs > s.max_queue:
        raise ValueError(f"max_inputs={s.max_inputs} must not exceed max_queue={s.max_queue}")
    if not max_length <= s.max_request_tokens <= s.max_queue_tokens:
        raise ValueError(f"need max_length ({max_length}) <= max_request_tokens ({s.max_request_tokens}) <= "
                         f"max_queue_tokens ({s.max_queue_tokens})")
    if s.max_doc_tokens > s.max_queue_tokens:
        raise ValueError(f"max_doc_tokens={s.max_doc_tokens} must not exceed max_queue_tokens={s.max_queue_tokens}")
    if s.late_window is not None and not 4 <= s.late_window <= emb.config.max_tokens:
        raise ValueError(f"late_window={s.late_window} must be in 4..{emb.config.max_tokens}")
    if s.late_overlap is not None and not 0 <= s.late_overlap < (s.late_window or max_length) // 2:
        raise ValueError(f"late_overlap={s.late_overlap} must be >= 0 and under half the window")
    if s.default_task is not None and s.default_task not in emb.tasks:
        raise ValueError(f"default task {s.default_task!r} unknown; allowed: {', '.join(emb.tasks)}")
    metrics = Metrics()
    batcher = Batcher(emb, s.max_batch_tokens, s.max_wait_ms, s.max_queue, metrics, s.late_window, s.late_overlap,
                      s.max_queue_tokens)
    keys = [k.encode() for k in s.api_keys]
    piece = emb.tokenizer.max_piece_chars
    # Character bounds checked before tokenising (see limits.py for why they are sound).
    text_chars, request_chars, doc_chars = max_length * piece, s.max_request_tokens * piece, s.max_doc_tokens * piece

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            batcher.abort()  # anything still queued has no connection left to answer
            await batcher.close()

    app = FastAPI(
        title="taskembed", version="0.1.0", lifespan=lifespan,
        description="OpenAI- and Jina-compatible embeddings with per-input task adapters and late chunking.",
    )
    app.state.batcher, app.state.metrics, app.state.settings, app.state.embedder = batcher, metrics, s, emb
    app.state.limits = {"max_length": max_length, "text_chars": text_chars, "request_chars": request_chars}
    api = keyed_router(s)  # every route but /health
    app.add_middleware(Guard, keys=keys, max_body_bytes=s.max_body_bytes, read_timeout_s=s.read_timeout_s,
                       metrics=metrics)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(InputError)
    async def _bad_input(request: Request, exc: InputError) -> Response:
        return error_response(400, str(exc), exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        msg, param = _validation_message(exc)
        return error_response(400, msg, param, "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        msg = str(exc.detail) if exc.status_code != 404 else f"no route {request.method} {request.url.path}"
        return error_response(exc.status_code, msg, headers=getattr(exc, "headers", None))

    # --- embeddings ---

    async def handle(req: EmbeddingRequest, request: Request, late: bool) -> Response:
        if batcher.closing:
            raise ApiError(503, "the server is shutting down; retry on another instance", code="shutting_down",
                           headers={"Connection": "close"})
        if req.model is not None and req.model not in s.model_names:
            raise ApiError(404, f"model {req.model!r} not found; this server has: {', '.join(s.model_names)}",
                           "model", "model_not_found")
        # inputs.py's checks, as encode() makes them; an InputError is answered with a 400 (below)
        texts = check_texts(req.input, "input", one_string=True, empty_strings=False, max_inputs=s.max_inputs)
        check_unicode(texts, "input")
        task = req.task if "task" in req.model_fields_set else s.default_task
        tasks = check_tasks(task, len(texts), emb.tasks, per="input")
        dim = emb.check_dimensions(req.dimensions)
        etype = req.embedding_type or "float"
        precision = {"float": "float32", "base64": "float32"}.get(etype, etype)
        b64 = etype == "base64" or req.encoding_format == "base64"
        if precision in ("int8", "uint8") and not req.normalized:
            raise ApiError(400, f"embedding_type={etype} uses a fixed scale for unit vectors; needs normalized=true",
                           "normalized")
        late = late or req.late_chunking
        if late and len(set(tasks)) > 1:
            raise ApiError(400, "late chunking embeds one document: give one task for all its chunks", "task")

        batcher.arriving += 1
        try:
            if late:
                n_chars = sum(len(t) for t in texts)
                if n_chars > doc_chars:
                    raise ApiError(400, f"the document has {n_chars} characters, more than the {doc_chars} "
                                        f"allowed for late chunking ({s.max_doc_tokens} tokens x {piece} "
                                        "characters, the longest token)", "input", "too_long")
                try:
                    if n_chars > INLINE_TOKENIZE_CHARS:
                        plan = await offload(late_chunking.plan, emb, texts, tasks[0], s.late_separator)
                    else:
                        plan = late_chunking.plan(emb, texts, tasks[0], s.late_separator)
                except ValueError as e:
                    message = str(e)
                else:
                    message = None
                if message is not None:
                    raise ApiError(400, message, "input")
                if plan.num_tokens > s.max_doc_tokens:
                    raise ApiError(400, f"the document has {plan.num_tokens} tokens, more than the "
                                        f"{s.max_doc_tokens} allowed for late chunking", "input", "too_long")
                job, n_tokens = Job(plan=plan), plan.num_tokens
            else:
                texts = check_chars(texts, text_chars, request_chars, req.truncate)
                prefixed, task_ids = emb.prepare(texts, tasks)
                del texts
                ids, n_tokens = await tokenize(emb, prefixed, max_length, req.truncate, "input",
                                               " (the limit counts the task prefix and 2 special tokens; send "
                                               "truncate=true to cut)")
                del prefixed
                job, pool = text_job(emb, ids, task_ids, n_tokens, s.max_request_tokens, "input")
            submit(batcher, job)
        finally:
            batcher.arriving -= 1

        vectors = await wait_for_job(job, request, batcher)
        if vectors is None:  # the client is gone; nobody reads this
            return Response(status_code=499)
        if not late:
            vectors = pool(vectors)
        out = vectors[:, :dim]
        if req.normalized:
            out = torch.nn.functional.normalize(out, p=2, dim=-1)
        arr = quantize(out.numpy(), precision)
        metrics.inputs.inc(len(req.input) if isinstance(req.input, list) else 1)
        metrics.tokens.inc(n_tokens)
        return _embedding_response(arr, b64, s.model_names[0], n_tokens)

    @api.post("/v1/embeddings", response_model=EmbeddingResponse, tags=["embeddings"],
              summary="Embed texts (OpenAI request + Jina extras)", responses=BODY_ERROR_DOCS)
    async def embeddings(req: EmbeddingRequest, request: Request) -> Response:
        return await handle(req, request, late=False)

    @api.post("/v1/late_chunking", response_model=EmbeddingResponse,
              tags=["embeddings"], summary="Late chunking: the inputs are the chunks of one document",
              responses=BODY_ERROR_DOCS)
    async def late(req: EmbeddingRequest, request: Request) -> Response:
        return await handle(req, request, late=True)

    # --- models, health, metrics ---

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "taskembed",
                "dimensions": emb.dimensions, "tasks": emb.tasks, "default_task": s.default_task,
                "max_tokens": max_length, "late_chunking_max_tokens": s.max_doc_tokens,
                "max_request_tokens": s.max_request_tokens, "max_inputs": s.max_inputs}

    @api.get("/v1/models", tags=["models"], summary="The served model",
             responses=ERROR_DOCS)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n) for n in s.model_names]}

    @api.get("/v1/models/{model_id}", tags=["models"], summary="One model",
             responses={404: _error_doc("Unknown model"), **ERROR_DOCS})
    async def model(model_id: str) -> dict[str, Any]:
        if model_id not in s.model_names:
            raise ApiError(404, f"model {model_id!r} not found", "model", "model_not_found")
        return model_card(model_id)

    health_doc = {"content": {"application/json": {"schema": {"type": "object"}}}}

    @app.get("/health", tags=["ops"], summary="Liveness and queue state (no key needed)",
             responses={200: {"description": "Serving"}, 503: {"description": "Draining: shutting down", **health_doc}})
    async def health() -> Response:
        body = {"status": "draining" if batcher.closing else "ok", "model": s.model_names[0],
                "queued_inputs": batcher.queued_inputs, "queued_tokens": batcher.queued_tokens}
        return Response(json.dumps(body), status_code=503 if batcher.closing else 200,
                        media_type="application/json")

    @api.get("/metrics", tags=["ops"], summary="Prometheus metrics (text format)",
             response_class=PlainTextResponse, responses={200: {"content": {"text/plain": {}}}, **ERROR_DOCS})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.include_router(api)

    def openapi() -> dict[str, Any]:
        # Validation failures answer 400 in the error shape, not FastAPI's 422: drop the 422 docs.
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for item in spec.get("paths", {}).values():
                for op in item.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                spec.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi
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
