"""`POST /v1/search`: query a loaded vector index (from `taskembed index`) over HTTP.

The query texts are tokenised here and embedded through the server's batcher, so search requests share
forward passes with /v1/embeddings traffic; the index lookup (a matmul, HNSW or Hamming scan) runs in a
thread so the event loop stays free.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..index import VectorIndex
from ..tokenizer import TokenizerError
from .app import ApiError, _wait_or_disconnect, submit
from .batcher import Job

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
    keys = [k.encode() for k in s.api_keys]
    if index.info.get("query_task") not in (None, *emb.tasks):
        raise ValueError(f"the index's query task {index.info.get('query_task')!r} is not one of this model's tasks")
    if index.dimensions not in emb.dimensions:
        raise ValueError(f"the index has {index.dimensions} dimensions; this model makes {emb.dimensions}")
    max_length = s.max_length or emb.default_max_length

    async def auth(request: Request) -> None:  # the same check as the app's other protected routes
        if not keys:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        ok = False
        for k in keys:
            ok |= hmac.compare_digest(token.strip().encode(), k)
        if scheme.lower() != "bearer" or not ok:
            raise ApiError(401, "missing or invalid API key: send `Authorization: Bearer <key>`",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    @app.post(path, dependencies=[Depends(auth)], tags=["search"], summary="Search the loaded vector index")
    async def search(req: SearchRequest, request: Request) -> Response:
        if (req.query is None) == (req.vector is None):
            raise ApiError(400, "give exactly one of `query` (text) or `vector`", "query")
        if not 1 <= req.k <= MAX_K:
            raise ApiError(400, f"k must be in 1..{MAX_K}", "k")
        if req.rescore is not None and not 1 <= req.rescore <= 100:
            raise ApiError(400, "rescore must be in 1..100", "rescore")
        n_tokens = 0
        if req.vector is not None:
            q = np.asarray(req.vector if isinstance(req.vector[0], list) else [req.vector], dtype=np.float32) \
                if req.vector else np.zeros((0, 0), np.float32)
            if q.ndim != 2 or q.shape[0] == 0 or q.shape[1] != index.dimensions:
                raise ApiError(400, f"vector must have {index.dimensions} values (or be a list of such)", "vector")
        else:
            texts = [req.query] if isinstance(req.query, str) else req.query
            if not texts or any(not t for t in texts):
                raise ApiError(400, "query must be a non-empty string or a list of non-empty strings", "query")
            if len(texts) > s.max_inputs:
                raise ApiError(400, f"too many queries: {len(texts)} > {s.max_inputs}", "query")
            task = req.task or index.info.get("query_task")
            if task is not None and task not in emb.tasks:
                raise ApiError(400, f"unknown task {task!r}; allowed: {', '.join(emb.tasks)}", "task")
            prefixed, task_ids = emb.prepare(texts, task)
            try:
                enc = emb.tokenizer.encode(prefixed, max_length, True)
            except TokenizerError as e:
                raise ApiError(400, str(e), "query") from None
            job = Job(ids=enc.ids, task_ids=task_ids)
            n_tokens = sum(len(x) for x in enc.ids)
            submit(batcher, job, s.retry_after_s)
            vectors = await _wait_or_disconnect(job, request, batcher)
            if vectors is None:
                return Response(status_code=499)
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
        # default=str: kept columns may hold dates or decimals, which JSON has no type for.
        return Response(json.dumps(body, ensure_ascii=False, default=str), media_type="application/json")
