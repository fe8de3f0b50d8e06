"""`POST /v1/search`: query a loaded vector index (from `taskembed index`) over HTTP.

The query texts are tokenised here and embedded through the server's batcher, so search requests share
forward passes with /v1/embeddings traffic; the index lookup (a matmul, HNSW or Hamming scan) runs in a
thread so the event loop stays free.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..index import VectorIndex
from ..inputs import check_tasks, check_texts
from .app import BODY_ERROR_DOCS, keyed_router, submit, text_job, tokenize, wait_for_job
from .errors import ApiError, json_response
from .limits import check_chars, check_unicode

MAX_K = 1000


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    query: str | list[str] | None = Field(None, description="Query text, or a list of query texts.")
    vector: list[float] | list[list[float]] | None = Field(
        None, description="Instead of query: query vector(s) of the index's dimensions.")
    k: int = Field(10, description=f"Hits per query (1..{MAX_K}).")
    task: str | None = Field(None, description="Query task (default: the index's query task).")
    rescore: int | None = Field(None, description="Binary indexes: rescore k x this many candidates.")


def register_search(app: FastAPI, index: VectorIndex, path: str = "/v1/search") -> None:
    """Add `POST {path}` to an app made by create_app (it uses the app's embedder, batcher and API keys)."""
    emb, batcher, s = app.state.embedder, app.state.batcher, app.state.settings
    router = keyed_router(s)
    lim = app.state.limits
    if index.info.get("query_task") not in (None, *emb.tasks):
        raise ValueError(f"the index's query task {index.info.get('query_task')!r} is not one of this model's tasks")
    if index.dimensions not in emb.dimensions:
        raise ValueError(f"the index has {index.dimensions} dimensions; this model makes {emb.dimensions}")

    @router.post(path, tags=["search"], summary="Search the loaded vector index",
              responses=BODY_ERROR_DOCS)
    async def search(req: SearchRequest, request: Request) -> Response:
        if (req.query is None) == (req.vector is None):
            raise ApiError(400, "give exactly one of `query` (text) or `vector`", "query")
        if not 1 <= req.k <= MAX_K:
            raise ApiError(400, f"k must be in 1..{MAX_K}", "k")
        if req.rescore is not None and not 1 <= req.rescore <= 100:
            raise ApiError(400, "rescore must be in 1..100", "rescore")
        n_tokens = 0
        if req.vector is not None:
            q = _query_vectors(req.vector, index.dimensions)
        else:
            if batcher.closing:
                raise ApiError(503, "the server is shutting down; retry on another instance", code="shutting_down",
                               headers={"Connection": "close"})
            texts = check_texts(req.query, "query", one_string=True, empty_strings=False, max_inputs=s.max_inputs)
            check_unicode(texts, "query")
            task = check_tasks(req.task or index.info.get("query_task"), len(texts), emb.tasks, per="query")
            # Queries are always truncated, as `taskembed search` does.
            texts = check_chars(texts, lim["text_chars"], lim["request_chars"], True, "query")
            prefixed, task_ids = emb.prepare(texts, task)
            batcher.arriving += 1
            try:
                ids, n_tokens = await tokenize(emb, prefixed, lim["max_length"], True, "query")
                job, pool = text_job(emb, ids, task_ids, n_tokens, s.max_request_tokens, "query")
                submit(batcher, job)
            finally:
                batcher.arriving -= 1
            vectors = await wait_for_job(job, request, batcher)
            if vectors is None:
                return Response(status_code=499)
            vectors = pool(vectors)
            q = torch.nn.functional.normalize(vectors[:, : index.dimensions], p=2, dim=-1).numpy()
        results = await run_in_threadpool(index.search, q, req.k, req.rescore)
        data: list[dict[str, Any]] = [
            {"object": "search_result", "index": i, "hits": [h.to_dict() for h in hits]}
            for i, hits in enumerate(results)
        ]
        body = {"object": "list", "data": data, "model": s.model_names[0],
                "index": {"count": index.size, "dimensions": index.dimensions, "kind": index.info["kind"],
                          "binary": index.info["binary"]},
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
        # Kept columns may hold dates or decimals (sent as strings) or NaN (sent as null).
        return json_response(body)

    app.include_router(router)


def _query_vectors(vector: list[float] | list[list[float]], dims: int) -> np.ndarray:
    """The request's vector(s) as a (n, dims) float32 array; ragged, empty or non-finite ones are a 400."""
    rows = vector if vector and isinstance(vector[0], list) else [vector]
    if not rows or any(not isinstance(r, list) for r in rows):
        raise ApiError(400, f"vector must be {dims} numbers or a list of such", "vector")
    bad = next((i for i, r in enumerate(rows) if len(r) != dims), None)
    if bad is not None:
        raise ApiError(400, f"vector[{bad}] has {len(rows[bad])} values; the index has {dims} dimensions", "vector")
    if any(not math.isfinite(x) for r in rows for x in r):
        raise ApiError(400, "vector holds NaN or infinity: give finite numbers", "vector")
    with np.errstate(over="ignore"):  # overflow is checked just below
        q = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(q).all() or not np.isfinite(np.linalg.norm(q, axis=1)).all():
        raise ApiError(400, "vector values overflow float32: give numbers of moderate size", "vector")
    return q
